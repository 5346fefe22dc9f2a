"""The heads' outputs for a collated batch from a causal pass that skips work the heads cannot see.

Prediction reads the regression / classification heads at the ``<st_pre>`` slots and at the
``<st_his>`` slots they answer. In a causal decoder three shortcuts leave those hidden states
unchanged (up to float rounding):

1. tail: tokens after a batch's last ``<st_pre>`` cannot influence it; the batch is cut there.
2. padding: with right padding every pad comes after its row's real tokens, so only pads attend to
   pads; no padding mask is needed (plain causal attention).
3. shared prefix: the rows of a batch share their first tokens (system prompt, instruction, often the
   region's description). Those run once, at batch size 1, into the backbone's own key/value cache
   (memoised while the prefix repeats); each batch continues from a copy of it expanded to the batch.

Everything runs through ``model(...)`` and the backbone's public cache API, so any Hugging Face
causal LM works; left-padded batches, batches without ``<st_pre>`` and training mode take the plain
forward.
"""

from __future__ import annotations

import copy

import torch

from stllm.models.st_llama import SPLICE_INPUTS, backbone_cache


class SlotPass:
    """``(reg_pred, cls_logits)`` of a collated batch, equal to ``model(**batch)``'s heads.

    Keeps the last shared prefix's cache between calls; build one per ``predict`` run (the memo is
    only valid while the model's weights do not change).
    """

    def __init__(self, model, share_prefix: bool = True, min_prefix: int = 8):
        self.model, self.share_prefix, self.min_prefix = model, share_prefix, min_prefix
        self._prefix: tuple[tuple[int, ...], object] | None = None  # token ids, their cache (batch 1)
        self.slot_ids = model.config.slot_token_ids

    @torch.inference_mode()
    def __call__(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        model, cfg = self.model, self.model.config
        device = next(model.parameters()).device
        ids = batch["input_ids"].to(device)
        mask = batch.get("attention_mask")
        mask = None if mask is None else mask.to(device)
        st = {k: batch[k].to(device) for k in SPLICE_INPUTS if k in batch}
        right_padded = mask is None or bool((mask[:, 1:] <= mask[:, :-1]).all() and mask[:, 0].all())
        pre = ids == cfg.st_pre_token_id if cfg.st_pre_token_id is not None else None
        if pre is None or not bool(pre.any()) or not right_padded or model.training:
            out = model(input_ids=ids, attention_mask=mask, **st, use_cache=False, logits_to_keep=1)
            return out.reg_pred, out.cls_logits
        ids = ids[:, : int(pre.any(dim=0).nonzero().max()) + 1]  # 1. the tail after the last <st_pre>
        p = self._prefix_len(ids)
        if p == 0:  # 2. no mask: pads only see pads
            out = model(input_ids=ids, **st, use_cache=False, logits_to_keep=1)
            return out.reg_pred, out.cls_logits
        cache = copy.deepcopy(self._prefix_cache(ids[:1, :p]))  # 3. continue from the shared prefix
        cache.batch_repeat_interleave(ids.shape[0])
        out = model(input_ids=ids[:, p:], **st, past_key_values=cache, use_cache=True, prefill=True, logits_to_keep=1)
        return out.reg_pred, out.cls_logits

    def _prefix_len(self, ids: torch.Tensor) -> int:
        """Length of the prefix all rows share, ending before the first slot token of any row."""
        if not self.share_prefix or ids.shape[0] < 2:
            return 0
        same = (ids == ids[:1]).all(dim=0)
        slot = torch.isin(ids, torch.tensor(self.slot_ids, device=ids.device)).any(dim=0)
        stop = ~same | slot
        n = int(stop.long().argmax()) if bool(stop.any()) else ids.shape[1] - 1
        return n if n >= self.min_prefix else 0

    def _prefix_cache(self, tokens: torch.Tensor):
        """The backbone's cache after ``tokens`` (1, P), memoised for a repeated prefix."""
        key = tuple(tokens[0].tolist())
        if self._prefix is None or self._prefix[0] != key:
            out = self.model.backbone(input_ids=tokens, use_cache=True, logits_to_keep=1)
            self._prefix = (key, backbone_cache(out))
        return self._prefix[1]
