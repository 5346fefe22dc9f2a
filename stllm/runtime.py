"""Run-time detection of GPU-only features, so one code path runs on a laptop and on a GPU node.

Nothing here imports flash-attn or DeepSpeed at import time; each is probed when asked for, and
the CPU fallback (SDPA attention, fp32, gloo) is announced in one log line rather than failing.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import platform
from dataclasses import dataclass

import torch

logger = logging.getLogger("stllm")


def has_package(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@dataclass(frozen=True)
class Runtime:
    device: str
    attn_implementation: str
    dtype: torch.dtype
    dist_backend: str
    reason: str

    def log_line(self) -> str:
        return (
            f"stllm runtime: device={self.device} attention={self.attn_implementation} "
            f"dtype={str(self.dtype).removeprefix('torch.')} backend={self.dist_backend} ({self.reason})"
        )


def detect_runtime(prefer_flash: bool = True) -> Runtime:
    """flash-attention 2 + bf16 + NCCL on a capable GPU; SDPA + fp32 + gloo otherwise."""
    if not torch.cuda.is_available():
        return Runtime("cpu", "sdpa", torch.float32, "gloo", "no CUDA device: SDPA attention, fp32")
    bf16 = torch.cuda.is_bf16_supported()
    dtype = torch.bfloat16 if bf16 else torch.float16
    if prefer_flash and has_package("flash_attn") and bf16:
        return Runtime("cuda", "flash_attention_2", dtype, "nccl", "flash-attn installed")
    why = "flash-attn not installed" if not has_package("flash_attn") else "GPU lacks bf16 for flash-attn"
    return Runtime("cuda", "sdpa", dtype, "nccl", f"{why}: SDPA attention")


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def inference_device(spec: str = "auto") -> torch.device:
    """``auto``: the first CUDA device when there is one, else the CPU. A CUDA device that is not there is a
    ``ValueError`` naming the flag, never a CUDA error deep inside the first forward."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as exc:
        raise ValueError(f"--device {spec!r}: not a device (cpu, cuda, cuda:N or auto)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {spec}: this machine has no CUDA device (torch {torch.__version__}); "
                         "use --device cpu or auto")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {spec}: only {torch.cuda.device_count()} CUDA device(s)")
    return device


def inference_dtype(spec: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on a CUDA device that has it (fp16 on one that does not), fp32 on the CPU."""
    if spec == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if spec not in DTYPES:
        raise ValueError(f"--dtype {spec!r}: one of auto, {', '.join(DTYPES)}")
    return DTYPES[spec]


def place_for_inference(model: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """``model`` on ``device`` with its backbone in ``dtype``. The ST encoder, projectors and heads (a fraction of a
    percent of the FLOPs) stay in float32: the heads correct the encoder's own forecast in closed form, and half
    precision would cost that correction its digits."""
    model.to(device)
    backbone = getattr(model, "backbone", None)
    (backbone if backbone is not None else model).to(dtype)
    logger.info("inference on %s, backbone in %s", device, str(dtype).removeprefix("torch."))
    return model


def trainer_flags(device: torch.device, dtype: torch.dtype) -> list[str]:
    """``TrainingArguments`` flags that train on ``device`` in ``dtype`` (mixed precision: fp32 weights, autocast).

    The Trainer takes every visible GPU (or torchrun's); one GPU of several is chosen with ``CUDA_VISIBLE_DEVICES``,
    so ``cuda:N`` is refused here rather than silently trained on another device."""
    if device.type == "cuda" and device.index is not None:
        raise ValueError(f"--device {device}: training takes the visible GPUs; pick one with "
                         f"CUDA_VISIBLE_DEVICES={device.index} and pass --device cuda")
    flags = ["--use_cpu", "true"] if device.type == "cpu" else []
    if dtype == torch.bfloat16:
        flags += ["--bf16", "true"]
    elif dtype == torch.float16:
        flags += ["--fp16", "true"]
    return flags


def environment_report() -> dict[str, str]:
    """Versions and capabilities, for bug reports and for ``stllm env``."""
    import transformers

    rt = detect_runtime()
    report = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda available": str(torch.cuda.is_available()),
        "gpus": str(torch.cuda.device_count()),
        "cpu threads": str(torch.get_num_threads()),
    }
    for pkg in ("peft", "deepspeed", "flash_attn", "tokenizers"):
        if has_package(pkg):
            mod = importlib.import_module(pkg) if pkg != "deepspeed" else None
            report[pkg] = getattr(mod, "__version__", "installed") if mod else "installed"
        else:
            report[pkg] = "not installed"
    report["attention"] = rt.attn_implementation
    report["dtype"] = str(rt.dtype).removeprefix("torch.")
    report["distributed backend"] = rt.dist_backend
    report["note"] = rt.reason
    return report
