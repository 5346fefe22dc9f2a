"""Model directories written all-or-nothing, and weight files checked before they are read.

A save writes every file into a staging directory first and moves them into place only once all of
them are written and flushed: a full disk or a kill in the middle of a save leaves the previous
files intact instead of a directory with a new ``config.json`` and no (or half a) model. Reading,
a truncated ``.safetensors`` file is named with its expected and actual size instead of safetensors'
"incomplete metadata, file not fully covered".
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

# weight files of one model: after a save, those the save did not write are stale (a LoRA checkpoint
# saved over full weights, one file over shards) and are removed, so a reload never mixes two saves
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin", "adapter_config.json",
                "st_base.safetensors")  # fmt: skip
WEIGHT_GLOBS = ("model-*-of-*.safetensors", "pytorch_model-*-of-*.bin")
STAGING_MARK = ".saving-"


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """``path`` holds ``text`` or its previous content, never half of it: written beside it, then renamed over it."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def staging_path(target: Path) -> Path:
    """Where a save of ``target`` is staged: a hidden sibling for a new directory (renamed whole at the
    end), a hidden folder inside an existing one (its files replace the old ones one by one). Hidden
    names never match ``checkpoint-*``, so checkpoint rotation and resume never see a staging folder."""
    if target.is_dir():
        return target / f"{STAGING_MARK}{os.getpid()}"
    return target.parent / f".{target.name}{STAGING_MARK}{os.getpid()}"


@contextlib.contextmanager
def staged_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a staging directory to write into; when the block ends without error, its files replace
    those of ``target`` (stale weight files of an earlier save are removed). On error ``target`` is
    untouched and the staging directory is removed."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} is a file, not a directory; choose another output directory")
    fresh = not target.exists()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_path(target)
    shutil.rmtree(staging, ignore_errors=True)  # left by an earlier process with this pid
    staging.mkdir()
    try:
        yield staging
        _flush_tree(staging)
        if not fresh or not _rename_whole(staging, target):
            _publish(staging, target)
        _fsync_dir(target.parent if fresh else target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _rename_whole(staging: Path, target: Path) -> bool:
    """Rename the staging directory to ``target``; False when ``target`` appeared meanwhile (another
    process, e.g. a DeepSpeed rank writing its shards, created it): then its files are published one by one."""
    try:
        os.rename(staging, target)
    except OSError:
        if target.is_dir():
            return False
        raise
    return True


def _publish(staging: Path, target: Path) -> None:
    """Move every file of ``staging`` over ``target``'s (``os.replace``: each file is old or new, never
    half), then remove the weight files the new save did not write."""
    written = set()
    for entry in sorted(staging.iterdir()):
        dest = target / entry.name
        if entry.is_dir() and dest.is_dir():
            _publish(entry, dest)
        else:
            os.replace(entry, dest)
        written.add(entry.name)
    stale = {n for n in WEIGHT_FILES if (target / n).is_file()}
    stale |= {p.name for g in WEIGHT_GLOBS for p in target.glob(g)}
    for name in stale - written:
        (target / name).unlink(missing_ok=True)


def _flush_tree(root: Path) -> None:
    """fsync every file under ``root`` (a rename is only durable after the data it points to)."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # not supported on this platform
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_safetensors(path: str | os.PathLike) -> None:
    """Raise ValueError naming ``path`` when it is not a complete ``.safetensors`` file: the header's
    tensors must end exactly at the end of the file (a copy or a save cut short does not)."""
    path = Path(path)
    size = path.stat().st_size
    advice = "the save or copy was probably cut short (disk full, killed job); save or copy it again"
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 0 or n > size - 8:
            raise ValueError(f"{path}: truncated or corrupt safetensors file ({size} bytes, shorter than its "
                             f"header); {advice}")  # fmt: skip
        try:
            header = json.loads(f.read(n))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            raise ValueError(f"{path}: corrupt safetensors file (unreadable header); {advice}") from None
    if 8 + n + end != size:
        raise ValueError(f"{path}: truncated or corrupt safetensors file: {size} bytes, its header describes "
                         f"{8 + n + end}; {advice}")  # fmt: skip


def check_safetensors_in(directory: str | os.PathLike) -> None:
    """:func:`check_safetensors` on every ``.safetensors`` file directly in ``directory`` (if it is one)."""
    directory = Path(directory)
    if directory.is_dir():
        for path in sorted(directory.glob("*.safetensors")):
            check_safetensors(path)
