"""Output directories: one artefact each, one writer at a time.

Every job that writes a directory (training, stage-1 pretraining, export, evaluation) claims it with
:func:`claim_output_dir`. The claim refuses a directory that holds another kind of artefact (an
export into a run directory, a geo encoder over an ST encoder), a directory of the same kind unless
``overwrite``, and a directory another live job is writing (a lock file with its pid). A lock left
by a killed job (its pid gone) is taken over with a warning, so ``kill -9`` never blocks a rerun.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger("stllm")
LOCK_NAME = ".stllm.lock"

# what a directory holds, told by the files the jobs write (first match wins)
_MARKERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("training run", ("trainer_state.json", "checkpoint-*", "training_args.bin")),
    ("encoder", ("encoder_config.json",)),
    ("evaluation", ("metrics.json", "predictions.jsonl", "predictions.jsonl.partial")),
    ("model", ("config.json", "model.safetensors", "adapter_config.json")),
)


def held_artifact(path: str | os.PathLike) -> str | None:
    """What ``path`` holds: ``"training run"``, ``"st encoder"``/``"geo encoder"``, ``"evaluation"``,
    ``"model"``, ``"other files"`` (non-empty, none of those), or None (missing or empty)."""
    path = Path(path)
    if not path.is_dir():
        return None
    names = [p for p in path.iterdir() if p.name != LOCK_NAME]
    if not names:
        return None
    for kind, patterns in _MARKERS:
        if any(any(path.glob(p)) for p in patterns):
            if kind == "encoder":
                return f"{_encoder_kind(path / 'encoder_config.json')} encoder"
            return kind
    return "other files"


def _encoder_kind(config: Path) -> str:
    try:
        return str(json.loads(config.read_text()).get("kind", "unknown"))
    except (OSError, ValueError, AttributeError):
        return "unknown"


def _alive(pid: int, host: str) -> bool:
    """Whether the lock's writer still runs (on another host: assumed so, it cannot be checked)."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _take_lock(lock: Path, kind: str) -> None:
    record = {"pid": os.getpid(), "host": socket.gethostname(), "kind": kind, "started": time.time()}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                held = json.loads(lock.read_text())
                pid, host = int(held["pid"]), str(held["host"])
            except (OSError, ValueError, KeyError, TypeError):
                held, pid, host = {}, -1, socket.gethostname()
            if pid != -1 and _alive(pid, host):
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(held.get("started", 0))))
                raise FileExistsError(
                    f"{lock.parent} is being written by another stllm job ({held.get('kind', '?')}, pid {pid} on "
                    f"{host}, started {when}); wait for it to finish or choose another output directory "
                    f"(delete {lock} only if that job is gone)"
                ) from None
            logger.warning("%s: taking over the lock of a job that no longer runs (pid %s)", lock, pid)
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        return
    raise FileExistsError(f"{lock}: could not take the lock (another job took it at the same time)")


def check_output_dir(path: str | os.PathLike, kind: str, overwrite: bool = False, flag: str = "--overwrite") -> None:
    """Refuse ``path`` when it holds another artefact than ``kind``, or one of ``kind`` without ``overwrite``
    (``flag`` is the option named in the message)."""
    path = Path(path)
    held = held_artifact(path)
    if held is None:
        return
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file, not a directory")
    if overwrite and held in (kind, "other files"):  # the message below offers the flag for other files
        return
    if held == kind:
        raise FileExistsError(f"{path} already holds a {held}; pass {flag} to replace it or choose another directory")
    raise FileExistsError(
        f"{path} already holds a {held}, not a {kind}: refusing to mix them; choose another directory"
        + (f" (or pass {flag} to replace it)" if held == "other files" else "")
    )


@contextlib.contextmanager
def claim_output_dir(
    path: str | os.PathLike, kind: str, overwrite: bool = False, flag: str = "--overwrite", check: bool = True
) -> Iterator[Path]:
    """Create ``path``, lock it for this process while the block runs, and (``check``) refuse it as
    :func:`check_output_dir` does. The lock is removed when the block ends, also on error."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file, not a directory")
    path.mkdir(parents=True, exist_ok=True)
    lock = path / LOCK_NAME
    _take_lock(lock, kind)
    try:
        if check:
            check_output_dir(path, kind, overwrite, flag)
        yield path
    finally:
        lock.unlink(missing_ok=True)
