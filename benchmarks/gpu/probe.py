"""Stage 1 of run.sh: whether the CuPy backend can run here, decided by xpnet's own device probe.

Loads ``backends/cuda_probe.py`` by its path, so it needs neither an installed xpnet nor NumPy, and writes
``probe.json`` (usable, reason, device) into the folder given as the only argument. Exit status 0 when the device
is usable, 2 when it is not (the reason is printed).

    python benchmarks/gpu/probe.py OUTDIR
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

PROBE = Path(__file__).resolve().parents[2] / "backends" / "cuda_probe.py"
NO_GPU = 2


def load_probe() -> ModuleType:
    """``backends/cuda_probe.py`` as a module, loaded from its file."""
    spec = importlib.util.spec_from_file_location("xpnet_gpu_cuda_probe", PROBE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def device_info() -> dict[str, Any]:
    """Name, memory, compute capability and CUDA versions of device 0 (called only once the probe passed)."""
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"]
    return {"name": name.decode() if isinstance(name, bytes) else str(name),
            "total_memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
            "compute_capability": f"{props['major']}.{props['minor']}",
            "device_count": cupy.cuda.runtime.getDeviceCount(),
            "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
            "cuda_driver": cupy.cuda.runtime.driverGetVersion(),
            "cupy": cupy.__version__}


def main(outdir: str) -> int:
    reason = load_probe().probe()
    result: dict[str, Any] = {"usable": reason is None, "reason": reason, "device": None}
    if reason is None:
        result["device"] = device_info()
        print(f"usable CUDA device: {json.dumps(result['device'])}")
    else:
        print(f"no usable GPU: {reason}")
    Path(outdir, "probe.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0 if reason is None else NO_GPU


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
