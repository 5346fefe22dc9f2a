"""STTrainer: ``transformers.Trainer`` that logs each loss term and saves complete checkpoints.

A checkpoint directory holds everything evaluation needs: LoRA adapter (with the trained
projectors, heads and slot-token rows) or full weights, the config, the base ST weights, the
tokenizer, and the run's artifacts (fitted scaler, split record) -- so
``STLlamaForCausalLM.from_pretrained(checkpoint)`` and the evaluation scripts need nothing else.
"""

from __future__ import annotations

import logging
import os

import torch
from transformers import Trainer, TrainerCallback

from stllm.models.checkpoint import save_lora_extras
from stllm.safe_io import staged_dir

LOSS_TERMS = ("lm_loss", "reg_loss", "cls_loss", "poi_loss", "mob_loss")
# what validation selects on (the LM term is not the task)
FORECAST_TERMS = ("reg_loss", "cls_loss", "poi_loss", "mob_loss")
logger = logging.getLogger("stllm")


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


class STTrainer(Trainer):
    """Trainer with per-term loss logging and stllm checkpoints.

    ``artifacts`` maps file names to text written into every checkpoint (e.g.
    ``{"scaler.json": scaler.to_json(), "split.json": record.to_json()}``).
    """

    def __init__(self, *args, artifacts: dict[str, str] | None = None, trust_checkpoint: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.artifacts = dict(artifacts or {})
        self.trust_checkpoint = trust_checkpoint
        self._term_sums: dict[str, torch.Tensor] = {}
        self._term_counts: dict[str, int] = {}
        self._eval_sums: dict[str, torch.Tensor] = {}
        self._eval_counts: dict[str, int] = {}

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """Resuming under DeepSpeed, its engine reads the ZeRO shards with ``torch.load(weights_only=False)``
        (transformers' own resume files are read weights-only): those loads are made weights-only too,
        unless ``trust_checkpoint``."""
        if not (resume_from_checkpoint and self.is_deepspeed_enabled and not self.trust_checkpoint):
            return super().train(resume_from_checkpoint, *args, **kwargs)
        import deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine as engine

        from stllm.train.export import weights_only_loads

        with weights_only_loads(engine, how="trust_checkpoint=True to STTrainer"):
            return super().train(resume_from_checkpoint, *args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        if outputs.loss is None:
            raise ValueError(f"the model returned no loss; batch keys were {sorted(inputs)}")
        sums, counts = (self._term_sums, self._term_counts) if model.training else (self._eval_sums, self._eval_counts)
        for name in LOSS_TERMS:
            value = getattr(outputs, name, None)
            if value is not None:
                sums[name] = sums.get(name, 0.0) + value.detach().float()
                counts[name] = counts.get(name, 0) + 1
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def evaluation_loop(self, *args, **kwargs):
        """Add each loss term's validation mean (``eval_reg_loss``...) and their forecast sum
        (``eval_forecast_loss``, what :class:`BestWeights` selects on) to the metrics."""
        self._eval_sums, self._eval_counts = {}, {}
        output = super().evaluation_loop(*args, **kwargs)
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        forecast = 0.0
        for name, total in self._eval_sums.items():
            mean = float(self.accelerator.reduce(total / self._eval_counts[name], reduction="mean"))
            output.metrics[f"{prefix}_{name}"] = round(mean, 6)
            forecast += mean if name in FORECAST_TERMS else 0.0
        output.metrics[f"{prefix}_forecast_loss"] = round(forecast, 6)
        return output

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each loss term since the last log (averaged over processes)."""
        if "loss" in logs and self._term_sums:
            for name, total in self._term_sums.items():
                mean = total / self._term_counts[name]
                logs[name] = round(float(self.accelerator.reduce(mean, reduction="mean")), 6)
            self._term_sums, self._term_counts = {}, {}
        super().log(logs, start_time)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        """Save the model, tokenizer, LoRA extras and artifacts all-or-nothing: everything is written to a
        staging directory and moved into ``output_dir`` only once complete (a full disk mid-save keeps the
        previous model). Covers the final ``save_model`` and the model part of every ``checkpoint-N``,
        also under DeepSpeed (its ZeRO shards are written afterwards by the engine itself)."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:  # non-writer ranks only join collectives (sharded loading)
            super()._save(output_dir, state_dict=state_dict)
            return
        with staged_dir(output_dir) as staging:
            super()._save(str(staging), state_dict=state_dict)
            model = self.accelerator.unwrap_model(self.model)
            if _is_peft(model):
                save_lora_extras(model, staging)
            for name, text in self.artifacts.items():
                with open(os.path.join(staging, name), "w", encoding="utf-8") as f:
                    f.write(text)


class BestWeights(TrainerCallback):
    """Keep the trainable weights of the best validation (lowest ``metric``), stop after ``patience``
    validations without improvement (0: never), and put the best weights back when training ends, so
    the saved checkpoint is the best one (in memory: no extra checkpoint files)."""

    def __init__(self, metric: str = "eval_forecast_loss", patience: int = 3):
        self.metric, self.patience = metric, int(patience)
        self.best, self.best_step, self.bad, self.weights = float("inf"), None, 0, None

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        value = (metrics or {}).get(self.metric)
        if value is None or model is None:
            return
        if value < self.best - 1e-9:
            self.best, self.best_step, self.bad = float(value), state.global_step, 0
            self.weights = {k: p.detach().to("cpu", copy=True) for k, p in model.named_parameters() if p.requires_grad}
        else:
            self.bad += 1
            if self.patience and self.bad >= self.patience:
                logger.warning("early stopping at step %d: %s has not improved on %.6f (step %s) for %d validations",
                               state.global_step, self.metric, self.best, self.best_step, self.bad)
                control.should_training_stop = True

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.weights is None or model is None:
            return
        params = dict(model.named_parameters())
        with torch.no_grad():
            for k, v in self.weights.items():
                params[k].copy_(v.to(params[k].device))
        logger.warning("kept the best weights: step %s, %s %.6f", self.best_step, self.metric, self.best)
