"""Stage `preflight`: reports the environment a pipeline will run in.

params (generated from PreflightParams; `python -m tanren_stages.protocol` rewrites this block):
  require_gpu (bool; default false): fail with StageConfigError when no CUDA device is usable
  min_free_disk_gb (number >= 0; default 0.0): fail with StageConfigError when less disk is free
(end of params)
Writes report.json to the output directory.
"""

from __future__ import annotations

import importlib.metadata as md
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass

from .protocol import StageConfigError, StageContext, param, run_stage, write_json

PACKAGES = [
    "torch",
    "transformers",
    "trl",
    "peft",
    "accelerate",
    "datasets",
    "sentencepiece",
    "tokenizers",
    "pyarrow",
    "numpy",
    "tensorboard",
    "bitsandbytes",
]


def tool_version(name: str) -> str | None:
    path = shutil.which(name)
    if not path:
        return None
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
        return out.splitlines()[0] if out else path
    except Exception:  # noqa: BLE001
        return path


def collect(ctx: StageContext) -> dict:
    import torch

    pkgs = {}
    for p in PACKAGES:
        try:
            pkgs[p] = md.version(p)
        except md.PackageNotFoundError:
            pkgs[p] = None
    cuda = torch.cuda.is_available()
    gpu: dict = {"available": cuda, "count": torch.cuda.device_count() if cuda else 0}
    if cuda:
        free, total = torch.cuda.mem_get_info(0)
        gpu.update(
            name=torch.cuda.get_device_name(0),
            capability=list(torch.cuda.get_device_capability(0)),
            bf16=torch.cuda.is_bf16_supported(),
            free_vram_bytes=free,
            total_vram_bytes=total,
        )
    du = shutil.disk_usage(ctx.output)
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": pkgs,
        "torch_build": {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if cuda else None,
        },
        "device_env": ctx.device,
        "gpu": gpu,
        "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
        "cpu_count": __import__("os").cpu_count(),
        "disk_free_bytes": du.free,
        "compilers": {"gcc": tool_version("gcc"), "g++": tool_version("g++")},
    }


@dataclass
class PreflightParams:
    """The `with:` params of a preflight stage."""

    require_gpu: bool = param(False, help="fail with StageConfigError when no CUDA device is usable")
    min_free_disk_gb: float = param(0.0, min=0, help="fail with StageConfigError when less disk is free")


PARAMS = PreflightParams


def main(ctx: StageContext) -> None:
    a = ctx.typed_params(PreflightParams)
    require_gpu = a.require_gpu
    min_disk = a.min_free_disk_gb
    report = collect(ctx)
    write_json(ctx.output / "report.json", report)
    ctx.artifact("report.json", "environment report")
    missing = []
    if require_gpu and not report["gpu"]["available"]:
        missing.append(f"a CUDA GPU (torch {report['torch_build']['version']} sees none; TANREN_DEVICE={ctx.device})")
    if report["disk_free_bytes"] < min_disk * 2**30:
        missing.append(f"{min_disk} GiB free disk (have {report['disk_free_bytes'] / 2**30:.1f} GiB)")
    if missing:
        raise StageConfigError("preflight: missing " + "; ".join(missing))
    ctx.result(
        {
            "gpu": report["gpu"].get("name"),
            "bf16": report["bf16"],
            "torch": report["torch_build"]["version"],
            "disk_free_gb": round(report["disk_free_bytes"] / 2**30, 1),
        }
    )


if __name__ == "__main__":
    run_stage(main)
