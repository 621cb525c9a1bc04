"""Resolve the serving image's dependencies for its base, without that base or a download of the wheels:
`pip install --dry-run --report` reads only the wheels' metadata.

pip evaluates dependency markers (`python_version >= "3.12"`, platform) against the interpreter that runs it,
whatever --python-version says, so the resolution runs under a Python of the base's version on Linux x86_64:
$ARMORM_LOCK_PYTHON, else python3.12 on PATH, else a pyenv 3.12.

    python scripts/image_lock.py                 # writes docker/requirements.lock from docker/requirements.in
    python scripts/image_lock.py --check         # resolves the lock itself and says what differs
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "docker" / "requirements.in"
LOCK = ROOT / "docker" / "requirements.lock"
# The base image (docker/Dockerfile) and what it runs on.
BASE_IMAGE = "nvcr.io/nvidia/tritonserver:25.04-py3"
PYTHON_VERSION = "3.12"


class NoTargetPython(RuntimeError):
    """No interpreter of the base image's Python version here: the markers could not be evaluated for it."""


def target_python() -> str:
    """An interpreter of PYTHON_VERSION on Linux x86_64, to run pip under."""
    if sys.platform != "linux" or platform.machine() != "x86_64":
        raise NoTargetPython(f"the image is linux/x86_64; this is {sys.platform}/{platform.machine()}")
    candidates = [os.environ.get("ARMORM_LOCK_PYTHON"), shutil.which(f"python{PYTHON_VERSION}"),
                  *sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{PYTHON_VERSION}.*/bin/python3")))]
    for candidate in filter(None, candidates):
        done = subprocess.run([candidate, "-c", "import sys, pip; print('%d.%d' % sys.version_info[:2])"],
                              capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip() == PYTHON_VERSION:
            return candidate
    raise NoTargetPython(f"no Python {PYTHON_VERSION} with pip here: set ARMORM_LOCK_PYTHON to one")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def resolve(requirements: Path, timeout: float = 600.0) -> dict[str, str]:
    """{package: version} that pip would install from `requirements` on the base image's Python and platform."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        command = [target_python(), "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                   "--disable-pip-version-check", "--report", str(report), "--only-binary=:all:",
                   "-r", str(requirements)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"pip could not resolve {requirements.name}:\n{done.stderr[-3000:]}")
        installs = json.loads(report.read_text())["install"]
    return {canonical(item["metadata"]["name"]): item["metadata"]["version"] for item in installs}


def read_lock(path: Path = LOCK) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonical(name.split("[")[0])] = version
    return pins


def write_lock(pins: dict[str, str], path: Path = LOCK) -> None:
    header = (f"# Every package of the serving image, pinned for {BASE_IMAGE} (Python {PYTHON_VERSION}, "
              "x86_64).\n# Written by `make image-lock` (scripts/image_lock.py) from requirements.in; "
              "do not edit by hand.\n")
    path.write_text(header + "".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="resolve the lock and report differences")
    args = parser.parse_args(argv)
    if args.check:
        resolved, pinned = resolve(LOCK), read_lock()
        differences = {name: (pinned.get(name), resolved.get(name)) for name in set(resolved) | set(pinned)
                       if pinned.get(name) != resolved.get(name)}
        for name, (lock, pip) in sorted(differences.items()):
            print(f"{name}: lock {lock}, resolved {pip}")
        return 1 if differences else 0
    pins = resolve(REQUIREMENTS)
    write_lock(pins)
    print(f"wrote {LOCK.relative_to(ROOT)}: {len(pins)} packages "
          f"(torch {pins.get('torch')}, numpy {pins.get('numpy')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
