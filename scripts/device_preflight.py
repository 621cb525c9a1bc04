"""Pre-flight of the device check (≤ 10 s): run by the model processes' own Python, as tritonserver starts it (the
stub venv's python3 first on PATH, isolated), it imports what they import and says what the backbone will pick.
A broken environment shows here, before minutes of the lease go to a server that cannot start.

    python3 -I scripts/device_preflight.py OUT_FILE
"""

from __future__ import annotations

import inspect
import sys
import time
from pathlib import Path


def main(out: Path) -> int:
    start = time.perf_counter()
    lines = [f"python {sys.version.split()[0]} at {sys.executable}"]
    ok = True
    try:
        import numpy

        lines.append(f"numpy {numpy.__version__} from {Path(numpy.__file__).parent}")
        if int(numpy.__version__.split(".")[0]) >= 2:
            ok = False
            lines.append("FAIL: numpy ≥ 2 in the model processes: the 24.10 stub crashes on BYTES inputs")
        import torch
        import transformers

        lines.append(f"torch {torch.__version__} (cuda {torch.version.cuda}), transformers {transformers.__version__}")
        gpu = torch.cuda.is_available()
        lines.append(f"GPU: {torch.cuda.get_device_name() if gpu else 'none visible'}")
        from armorm.model.packed import varlen_kwargs
        from armorm.runtimes import RUNTIMES
        from armorm.serving import triton_glue  # noqa: F401 - what every model.py imports

        try:
            from torch.nn.attention.varlen import varlen_attn
        except ImportError:
            lines.append("varlen attention: absent in this torch (the backbone uses the SDPA loop)")
        else:
            lines.append(f"varlen_attn{inspect.signature(varlen_attn)}")
            lines.append(f"keywords chosen: {varlen_kwargs(varlen_attn)}"
                         + ("" if gpu else " (used only on a GPU)"))
        lines.append(f"runtimes: {', '.join(RUNTIMES)}")
    except Exception as err:  # noqa: BLE001 - the point is to report any import failure
        ok = False
        lines.append(f"FAIL: {type(err).__name__}: {err}")
    lines.append(f"pre-flight {'ok' if ok else 'FAILED'} in {time.perf_counter() - start:.1f}s")
    text = "\n".join(lines)
    print(text, flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
