"""Runs a stage module exactly as `python -m <module>` would, then records CUDA memory figures.

    PYTHONPATH=stages python3 bench/gpu/stage_wrapper.py tanren_stages.pretrain

The stage code is not changed: the module runs under runpy as __main__. On exit (normal,
sys.exit from the protocol's fail(), or an exception) the wrapper writes
$PROFILE_CUDA_STATS (JSON): max_memory_allocated / max_memory_reserved over the whole
process, allocator retries, the device name, and TF32 settings. The stage's own
`peak_mem_gb` metric (max_memory_allocated since training began) stays the primary figure.
"""
from __future__ import annotations

import json
import os
import runpy
import sys
import time


def _stats() -> dict:
    out: dict = {"wall_s": round(time.perf_counter() - T0, 3)}
    try:
        import torch

        out["torch"] = torch.__version__
        try:
            out["matmul_allow_tf32"] = bool(torch.backends.cuda.matmul.allow_tf32)
        except Exception:  # noqa: BLE001
            pass
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            s = torch.cuda.memory_stats()
            out.update(
                device=torch.cuda.get_device_name(0),
                max_allocated_gib=round(torch.cuda.max_memory_allocated() / 2**30, 3),
                max_reserved_gib=round(torch.cuda.max_memory_reserved() / 2**30, 3),
                alloc_retries=int(s.get("num_alloc_retries", 0)),
                ooms=int(s.get("num_ooms", 0)),
            )
    except Exception as e:  # noqa: BLE001
        out["stats_error"] = f"{type(e).__name__}: {e}"
    return out


T0 = time.perf_counter()

if __name__ == "__main__":
    # bench/gpu holds profile.py, which would shadow the stdlib `profile` (cProfile imports it)
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _here]
    module = sys.argv[1]
    sys.argv = [module] + sys.argv[2:]
    path = os.environ.get("PROFILE_CUDA_STATS")
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        if path:
            try:
                with open(path, "w") as f:
                    json.dump(_stats(), f)
            except Exception:  # noqa: BLE001
                pass
