"""``stllm export CHECKPOINT OUTPUT``: any training checkpoint -> a plain ``from_pretrained`` directory.

Handles the three things a run leaves behind: DeepSpeed ZeRO shards (``global_step*/``: the fp32
master weights are consolidated with DeepSpeed's own ``zero_to_fp32``), an stllm LoRA checkpoint
(adapter merged), and full weights. The output also carries every run artefact evaluation reads (the
data arguments, the fitted scaler, the split record, the tokenizer, chat template and generation
config), so ``stllm eval OUTPUT`` evaluates exactly like the run -- no manual ``zero_to_fp32.py`` step.

ZeRO shards are pickles; DeepSpeed reads them with ``torch.load(weights_only=False)``, which runs any
code a planted object carries. Here every such load is a weights-only load (plus the few DeepSpeed
classes the shards hold); a shard needing anything else is refused unless ``--trust_checkpoint``.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import pickle
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

from stllm.outdir import LOCK_NAME, check_output_dir, claim_output_dir
from stllm.safe_io import STAGING_MARK, staged_dir

# top-level files of a checkpoint that are not run artefacts: weights (re-written merged), training
# state (optimizer, RNG, trainer state, pickled training arguments), DeepSpeed's helpers, locks
NOT_COPIED = ("config.json", "*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json", "*.pt",
              "*.pth", "adapter_config.json", "trainer_state.json", "latest", "zero_to_*.py", LOCK_NAME,
              f".*{STAGING_MARK}*", "metrics.json", "predictions.jsonl*", "encoder_config.json")  # fmt: skip
TRUST_FLAG = "--trust_checkpoint"


def zero_shards(checkpoint: Path) -> Path | None:
    """The ``global_step*`` folder of a DeepSpeed checkpoint (the one ``latest`` names), if any."""
    latest = checkpoint / "latest"
    if latest.is_file():
        name = latest.read_text().strip()
        if not name or Path(name).name != name or name in (".", ".."):
            raise ValueError(f"{latest}: names {name!r}, not a folder of {checkpoint}; it must hold a tag "
                             "such as global_step100")  # fmt: skip
        tag = checkpoint / name
        if tag.is_dir():
            return tag
    steps = sorted(checkpoint.glob("global_step*"), key=lambda p: int(p.name.removeprefix("global_step") or 0))
    return steps[-1] if steps else None


def _deepspeed_safe_globals() -> list:
    """The DeepSpeed classes ZeRO shards pickle (deepspeed 0.19: the loss scaler and its profile, the
    stage enum, the fragment addresses of the optimizer state): plain data holders, rebuilt from
    their fields without running code of the file."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaleProfile, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, LossScaleProfile, ZeroStageEnum, fragment_address]


def _refusal(file, detail: str, how: str) -> PermissionError:
    return PermissionError(
        f"{file}: {detail}; loading it could run code planted in the checkpoint, so it is refused. Pass "
        f"{how} only if you trust whoever wrote this checkpoint"
    )


class _WeightsOnlyTorch:
    """Stands in for ``torch`` inside a DeepSpeed module: its ``torch.load`` becomes a weights-only
    load; everything else is torch's. ``how`` says how to allow full loads (named in the refusal)."""

    def __init__(self, how: str):
        self._how = how

    def __getattr__(self, name: str):
        return getattr(torch, name)

    def load(self, f, *args, **kwargs):
        kwargs["weights_only"] = True
        allowed = _deepspeed_safe_globals()
        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(f, *args, **kwargs)
        except pickle.UnpicklingError as e:
            try:
                names = set(torch.serialization.get_unsafe_globals_in_checkpoint(f))
            except Exception:  # noqa: BLE001 -- not a zip checkpoint (DeepSpeed's legacy format): torch's message
                names = set(re.findall(r"GLOBAL ([\w.]+)", str(e)))
            names -= {f"{c.__module__}.{c.__qualname__}" for c in allowed}
            what = f"it pickles {sorted(names)}" if names else "it holds objects a weights-only load refuses"
            raise _refusal(f, what, self._how) from None


@contextlib.contextmanager
def weights_only_loads(module, how: str = f"{TRUST_FLAG} (trust_checkpoint=True)") -> Iterator[None]:
    """Make every ``torch.load`` of DeepSpeed's ``module`` (``zero_to_fp32``, the checkpoint engine a
    resume reads shards with) weights-only while the block runs."""
    if getattr(module, "torch", None) is not torch:
        raise _refusal(module.__file__, f"{module.__name__} cannot be made to load shards weights-only", how)
    module.torch = _WeightsOnlyTorch(how)
    try:
        yield
    finally:
        module.torch = torch


def _zero_state_dict(checkpoint: Path, shards: Path, trust: bool) -> dict:
    import deepspeed.utils.zero_to_fp32 as z

    with contextlib.nullcontext() if trust else weights_only_loads(z):
        return z.get_fp32_state_dict_from_zero_checkpoint(str(checkpoint), tag=shards.name)


def load_trained(checkpoint: str | Path, *, trust_checkpoint: bool = False):
    """The trained :class:`STLlamaForCausalLM` from any checkpoint kind (LoRA merged where possible).

    ZeRO shards are read weights-only; ``trust_checkpoint`` allows the full pickle loads DeepSpeed
    would do (only for checkpoints from a trusted source)."""
    from stllm.models import STLlamaConfig, STLlamaForCausalLM
    from stllm.models.checkpoint import is_lora_checkpoint, load_lora_checkpoint, merge_adapter

    checkpoint = Path(checkpoint)
    if not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"{checkpoint} is not a training checkpoint: config.json is missing")
    shards = zero_shards(checkpoint)
    if shards is None:
        return STLlamaForCausalLM.from_pretrained(checkpoint)
    state = _zero_state_dict(checkpoint, shards, trust_checkpoint)
    if is_lora_checkpoint(checkpoint):
        model = load_lora_checkpoint(STLlamaForCausalLM, checkpoint, merge=False)
    else:
        model = STLlamaForCausalLM(STLlamaConfig.from_pretrained(checkpoint))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", {}) or {})
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(f"{shards}: ZeRO weights do not match the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")  # fmt: skip
    if hasattr(model, "merge_and_unload"):
        model = merge_adapter(model)
    return model.eval()


def run_artifacts(checkpoint: Path) -> list[Path]:
    """The checkpoint's top-level files evaluation may read: everything except weights, training state
    and the files that mark another kind of directory (see :data:`NOT_COPIED`)."""
    return sorted(p for p in checkpoint.iterdir()
                  if p.is_file() and not any(fnmatch.fnmatch(p.name, pat) for pat in NOT_COPIED))  # fmt: skip


def _check_destination(checkpoint: Path, output: Path, overwrite: bool) -> None:
    """Refuse an export into the checkpoint itself, into a folder inside it, or over another artefact."""
    src, dst = checkpoint.resolve(), output.resolve()
    if dst == src or src in dst.parents:
        raise ValueError(f"{output} is inside the checkpoint {checkpoint}: export writes a new directory; "
                         "choose one outside the checkpoint")  # fmt: skip
    check_output_dir(output, "model", overwrite=overwrite, flag="--overwrite")


def _save_model(model, out: Path) -> None:
    """A merged model saves as plain weights; one left wrapped (tied embeddings) as an stllm LoRA checkpoint."""
    model.save_pretrained(out)
    if hasattr(model, "peft_config") and hasattr(model, "get_base_model"):
        from stllm.models.checkpoint import save_lora_extras

        save_lora_extras(model, out)


def export_checkpoint(
    checkpoint: str | Path, output: str | Path, *, overwrite: bool = False, trust_checkpoint: bool = False
) -> Path:
    """Write the trained model, tokenizer and run artifacts of ``checkpoint`` under ``output``.

    ``output`` must be new, empty or (with ``overwrite``) an earlier export; it is written all or
    nothing. ``trust_checkpoint``: see :func:`load_trained`."""
    checkpoint, output = Path(checkpoint), Path(output)
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"checkpoint directory {checkpoint} does not exist")
    _check_destination(checkpoint, output, overwrite)
    model = load_trained(checkpoint, trust_checkpoint=trust_checkpoint)
    with claim_output_dir(output, "model", overwrite=overwrite, flag="--overwrite"), staged_dir(output) as staging:
        _save_model(model, staging)
        for path in run_artifacts(checkpoint):
            shutil.copy2(path, staging / path.name)
    return output


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export", allow_abbrev=False, help="turn a training checkpoint (ZeRO, LoRA or full) into a plain model dir")
    p.add_argument("checkpoint", help="a checkpoint directory written by stllm train")
    p.add_argument("output", help="where the from_pretrained directory is written (new, or an earlier export)")
    p.add_argument("--overwrite", action="store_true", help="replace the model already exported to OUTPUT")
    p.add_argument(TRUST_FLAG, action="store_true",
                   help="allow full pickle loads of DeepSpeed shards that a weights-only load refuses "
                        "(they can run code: only for checkpoints you trust)")  # fmt: skip
    p.set_defaults(func=_run_export)
    return p


def _run_export(args: argparse.Namespace) -> int:
    out = export_checkpoint(args.checkpoint, args.output, overwrite=args.overwrite,
                            trust_checkpoint=args.trust_checkpoint)  # fmt: skip
    print(f"exported to {out}")
    return 0
