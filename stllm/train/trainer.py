"""STTrainer: ``transformers.Trainer`` that logs each loss term and saves complete checkpoints.

A checkpoint directory holds everything evaluation needs: LoRA adapter (with the trained
projectors, heads and slot-token rows) or full weights, the config, the base ST weights, the
tokenizer, and the run's artifacts (fitted scaler, split record) -- so
``STLlamaForCausalLM.from_pretrained(checkpoint)`` and the evaluation scripts need nothing else.
"""

from __future__ import annotations

import os

import torch
from transformers import Trainer

from stllm.models.checkpoint import save_lora_extras

LOSS_TERMS = ("lm_loss", "reg_loss", "cls_loss", "poi_loss")


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


class STTrainer(Trainer):
    """Trainer with per-term loss logging and stllm checkpoints.

    ``artifacts`` maps file names to text written into every checkpoint (e.g.
    ``{"scaler.json": scaler.to_json(), "split.json": record.to_json()}``).
    """

    def __init__(self, *args, artifacts: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.artifacts = dict(artifacts or {})
        self._term_sums: dict[str, torch.Tensor] = {}
        self._term_counts: dict[str, int] = {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        if outputs.loss is None:
            raise ValueError(f"the model returned no loss; batch keys were {sorted(inputs)}")
        if model.training:
            for name in LOSS_TERMS:
                value = getattr(outputs, name, None)
                if value is not None:
                    self._term_sums[name] = self._term_sums.get(name, 0.0) + value.detach().float()
                    self._term_counts[name] = self._term_counts.get(name, 0) + 1
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each loss term since the last log (averaged over processes)."""
        if "loss" in logs and self._term_sums:
            for name, total in self._term_sums.items():
                mean = total / self._term_counts[name]
                logs[name] = round(float(self.accelerator.reduce(mean, reduction="mean")), 6)
            self._term_sums, self._term_counts = {}, {}
        super().log(logs, start_time)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        super()._save(output_dir, state_dict=state_dict)
        if not self.args.should_save:
            return
        model = self.accelerator.unwrap_model(self.model)
        if _is_peft(model):
            save_lora_extras(model, output_dir)
        for name, text in self.artifacts.items():
            with open(os.path.join(output_dir, name), "w", encoding="utf-8") as f:
                f.write(text)
