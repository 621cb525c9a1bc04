"""Build the device kit: everything the GPU machine lacks to run the served system, in one folder ≤ 60 MiB.

The device (the lent GPU machine) has torch, transformers, numpy 2, grpcio, protobuf, aiohttp and pytest,
but no tritonserver, no tritonclient and no Llama-3 tokenizer, and installs nothing. The kit holds:

- triton.tar.xz: tritonserver 2.51 with the Python backend from the nvidia-pytriton 0.7.0 wheel, laid out as
  the wheel is (pytriton/tritonserver + nvidia_pytriton.libs), stripped to one Python-backend stub (the target
  Python's) and the shared libraries that tritonserver, the backend and that stub load (found with ldd);
- numpy-1.26 wheel for the target Python: the 24.10 stub crashes on BYTES inputs with numpy 2, so the stub
  processes (only they) import this one (scripts/device_check.sh gives them a venv of their own);
- site.tar.xz: tritonclient's pure-Python gRPC client, prometheus_client and python-rapidjson (its one compiled
  dependency) for
  the target Python; the project itself travels as tracked files;
- tokenizer.json.xz: the Llama-3 tokenizer for the random checkpoints;
- manifest.json: the target Python, every file with its size and sha256.

    python scripts/device_kit.py build/device --python 3.12     # the device (make device-kit)
    python scripts/device_kit.py build/device-rehearsal --python 3.11   # this machine (make device-rehearsal)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

LIMIT_BYTES = 60 << 20
NUMPY_FOR_STUBS = "numpy==1.26.4"
RAPIDJSON = "python-rapidjson==1.20"
TRITONCLIENT_PARTS = ("__init__.py", "_auth.py", "_client.py", "_plugin.py", "_request.py", "grpc", "utils")


def say(message: str) -> None:
    print(f"[device-kit] {message}", file=sys.stderr, flush=True)


def wheel_roots() -> tuple[Path, Path, Path]:
    """(pytriton/tritonserver, nvidia_pytriton.libs, tritonclient) from this environment's installs."""
    import pytriton
    import tritonclient

    server = Path(pytriton.__file__).resolve().parent / "tritonserver"
    return server, server.parent.parent / "nvidia_pytriton.libs", Path(tritonclient.__file__).resolve().parent


def needed_libraries(binaries: list[Path], libs: Path, python_libdir: str) -> set[str]:
    """The bundled libraries (by file name) that `binaries` load, directly or through each other."""
    environment = {**os.environ, "LD_LIBRARY_PATH": f"{libs}:{python_libdir}"}
    needed: set[str] = set()
    for binary in binaries:
        output = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, env=environment).stdout
        for line in output.splitlines():
            if "=>" in line and f"/{libs.name}/" in line:
                needed.add(Path(line.split("=>")[1].split()[0]).name)
    return needed


def add_file(archive: tarfile.TarFile, source: Path, name: str) -> None:
    info = archive.gettarinfo(str(source), arcname=name)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    with open(source, "rb") as handle:
        archive.addfile(info, handle)


def triton_archive(target: Path, python: str, preset: int) -> None:
    server, libs, _ = wheel_roots()
    stub = server / "python_backend_stubs" / python / "triton_python_backend_stub"
    if not stub.exists():
        raise SystemExit(f"nvidia-pytriton ships no Python-backend stub for Python {python}")
    import sysconfig

    binaries = [server / "bin" / "tritonserver", server / "backends" / "python" / "libtriton_python.so", stub,
                *sorted((server / "caches").rglob("*.so"))]
    libraries = needed_libraries(binaries, libs, sysconfig.get_config_var("LIBDIR") or "")
    say(f"tritonserver: {len(libraries)} of {len(list(libs.iterdir()))} bundled libraries are loaded; the rest "
        "(e.g. the wheel's own libpython3.13) stay out")
    entries = [(path, f"pytriton/tritonserver/{path.relative_to(server)}") for path in sorted(server.rglob("*"))
               if path.is_file() and "__pycache__" not in path.parts
               and path.relative_to(server).parts[0] != "python_backend_stubs"]
    entries.append((stub, f"pytriton/tritonserver/python_backend_stubs/{python}/triton_python_backend_stub"))
    entries += [(libs / name, f"nvidia_pytriton.libs/{name}") for name in sorted(libraries)]
    xz_tar(target, entries, preset)


def xz_tar(target: Path, entries: list[tuple[Path, str]], preset: int) -> None:
    with lzma.open(target, "wb", preset=preset) as packed, tarfile.open(fileobj=packed, mode="w") as archive:
        for source, name in entries:
            add_file(archive, source, name)


def download_wheel(requirement: str, python: str, directory: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", requirement, "--no-deps", "--only-binary", ":all:",
                    "--python-version", python, "--platform", "manylinux2014_x86_64", "--platform",
                    "manylinux_2_17_x86_64", "--implementation", "cp", "-d", str(directory)], check=True)
    name = requirement.split("==")[0].replace("-", "_")
    return next(p for p in directory.glob("*.whl") if p.name.lower().startswith(name.lower()))


def client_site(target: Path, python: str, scratch: Path) -> None:
    _, _, tritonclient = wheel_roots()
    for part in TRITONCLIENT_PARTS:
        source = tritonclient / part
        destination = target / "tritonclient" / part
        if source.is_dir():
            shutil.copytree(source, destination, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination)
    with zipfile.ZipFile(download_wheel(RAPIDJSON, python, scratch)) as wheel:
        wheel.extractall(target)
    # The gateway's metrics exposition; pure Python, absent from the device.
    import prometheus_client

    shutil.copytree(Path(prometheus_client.__file__).resolve().parent, target / "prometheus_client",
                    ignore=shutil.ignore_patterns("__pycache__"))


def build(output: Path, python: str, preset: int = 6) -> Path:
    if output.exists():
        shutil.rmtree(output)
    output.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as scratch:
        say("tritonserver 2.51 + Python backend → triton.tar.xz" + (" (xz takes a minute)" if preset > 3 else ""))
        triton_archive(output / "triton.tar.xz", python, preset)
        say(f"{NUMPY_FOR_STUBS} for the stub processes (Python {python})")
        shutil.copy2(download_wheel(NUMPY_FOR_STUBS, python, Path(scratch)), output)
        say("tritonclient gRPC client + python-rapidjson → site.tar.xz")
        site = Path(scratch) / "site"
        client_site(site, python, Path(scratch) / "wheels")
        xz_tar(output / "site.tar.xz", [(path, str(path.relative_to(site))) for path in sorted(site.rglob("*"))
                                        if path.is_file()], preset)
    say("Llama-3 tokenizer → tokenizer.json.xz")
    from armorm.testing.random_checkpoint import llama3_tokenizer_json

    (output / "tokenizer.json.xz").write_bytes(lzma.compress(json.dumps(llama3_tokenizer_json()).encode()))
    files = {str(p.relative_to(output)): p for p in sorted(output.rglob("*")) if p.is_file()}
    total = sum(p.stat().st_size for p in files.values())
    manifest = {"python": python, "total_bytes": total, "files": {
        name: {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
        for name, p in files.items()}}
    (output / "manifest.json").write_text(json.dumps(manifest, indent=1))
    say(f"kit ready: {output} holds {total / 2**20:.1f} MiB in {len(files)} files (limit {LIMIT_BYTES >> 20} MiB)")
    if total > LIMIT_BYTES:
        raise SystemExit(f"the kit is {total / 2**20:.1f} MiB, over the {LIMIT_BYTES >> 20} MiB the device accepts")
    return output


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, nargs="?", default=Path("build/device"))
    parser.add_argument("--python", default="3.12", help="the device's Python (3.12); this machine's for a rehearsal")
    parser.add_argument("--fast", action="store_true", help="light compression (a rehearsal: same files, bigger)")
    args = parser.parse_args()
    build(args.output, args.python, preset=1 if args.fast else 6)
    return 0


if __name__ == "__main__":
    sys.exit(main())

