"""``--device`` / ``--dtype`` for the bench scripts: one place that picks them, degrades cleanly and times with device
synchronisation (a CUDA kernel launch returns before the work is done: wall time without a sync measures the
launch, not the work)."""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator

import torch

from stllm.runtime import DTYPES, inference_device


def add_device_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("device")
    g.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    g.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="weights and activations")


def resolve_device(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """``(device, dtype)`` from the flags; a CUDA device on a machine without one is one clear line and exit 2."""
    try:
        return inference_device(args.device), DTYPES[args.dtype]
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def synchronize() -> None:
    """Wait for every queued CUDA kernel (nothing to wait for on CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object]) -> float:
    """Seconds of ``fn()``, the device drained before starting and stopping the clock."""
    synchronize()
    t0 = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - t0


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


@contextlib.contextmanager
def built_on(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Modules created inside are allocated on ``device`` in ``dtype`` directly: a 7B model built on the host
    in fp32 first would need 27 GB of host memory and minutes of random initialisation."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)
