"""Where tritonserver lives and what it needs around it: the pip-distributed server (nvidia-pytriton 0.7.0 =
Triton 2.51.0) or a system install (the NGC image), its backend directory, and its environment."""

from __future__ import annotations

import os
import shutil
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

STUB_BIN_ENV = "ARMORM_STUB_BIN"


class ServerStartError(RuntimeError):
    """tritonserver cannot start or serve: not installed, died during start-up, or not ready in time."""


@dataclass(frozen=True)
class TritonInstall:
    """Where tritonserver lives: the nvidia-pytriton wheel (pip) or a system install (the NGC image)."""

    root: Path  # holds bin/tritonserver, backends/, caches/
    libs: Path | None = None  # pip: .../site-packages/nvidia_pytriton.libs

    @classmethod
    def find(cls) -> TritonInstall:
        explicit = os.environ.get("ARMORM_TRITON_ROOT")
        if explicit:  # a system install, or the wheel's layout unpacked elsewhere (the device kit)
            libs = Path(explicit).parent.parent / "nvidia_pytriton.libs"
            return cls(root=Path(explicit), libs=libs if libs.is_dir() else None)
        try:
            import pytriton
        except ImportError:
            system = Path("/opt/tritonserver")
            if (system / "bin" / "tritonserver").exists():
                return cls(root=system)
            raise ServerStartError(
                "tritonserver is not installed: pip install 'nvidia-pytriton==0.7.0' (or `pip install -e .[server]`),"
                " or set ARMORM_TRITON_ROOT to a Triton install"
            ) from None
        root = Path(pytriton.__file__).resolve().parent / "tritonserver"
        return cls(root=root, libs=root.parent.parent / "nvidia_pytriton.libs")

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    def backend_directory(self) -> Path:
        """System installs as they are; the wheel needs a copy of its backends tree holding the stub
        built for this Python (in a per-user cache, built once)."""
        if self.libs is None:
            return self.root / "backends"
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = self.root / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.exists():
            raise ServerStartError(f"pytriton ships no Python-backend stub for Python {version}")
        default_cache = Path(tempfile.gettempdir()) / f"armorm-triton-{os.getuid()}"
        cache = Path(os.environ.get("ARMORM_TRITON_CACHE", default_cache))
        target = cache / f"backends-py{version}"
        if not (target / "python" / stub.name).exists():
            staging = cache / f".staging-{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            shutil.copytree(self.root / "backends", staging, symlinks=True)
            shutil.copy2(stub, staging / "python" / stub.name)
            shutil.rmtree(target, ignore_errors=True)
            staging.rename(target)
        return target

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """tritonserver's environment; its model processes inherit it.

        The stubs run an isolated embedded Python (PYTHONPATH is ignored) that takes its site-packages from the
        `python3` first on PATH: this interpreter's, or the venv named by ARMORM_STUB_BIN (the device kit's,
        holding numpy 1.x: the 24.10 stub crashes on BYTES with numpy 2).
        """
        env = dict(os.environ if base is None else base)
        bindir = env.get(STUB_BIN_ENV) or str(Path(sys.executable).parent)
        env["PATH"] = os.pathsep.join([bindir, env.get("PATH", "")])
        if self.libs is not None:
            libdirs = [str(self.libs), sysconfig.get_config_var("LIBDIR") or ""]
            env["LD_LIBRARY_PATH"] = os.pathsep.join([d for d in libdirs + [env.get("LD_LIBRARY_PATH", "")] if d])
        return env
