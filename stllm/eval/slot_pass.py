"""The heads' outputs for a collated batch from a causal pass that skips work the heads cannot see.

Prediction reads the regression / classification heads at the ``<st_pre>`` slots and at the
``<st_his>`` slots they answer. In a causal decoder three shortcuts leave those hidden states
unchanged (up to float rounding):

1. tail: tokens after a batch's last ``<st_pre>`` cannot influence it; the batch is cut there.
2. padding: with right padding every pad comes after its row's real tokens, so only pads attend to
   pads; no padding mask is needed (plain causal attention).
3. shared prefix: the rows of a batch share their first tokens (system prompt, instruction, often the
   region's description). Those run once, at batch size 1, into the backbone's own key/value cache;
   each batch continues from a copy of it expanded to the batch. Two memos make "once" hold for the
   whole run, not per batch: the *root*, the prefix every batch so far has shared (the system prompt
   and instruction: computed once per run, recomputed only when a batch diverges inside it), and the
   last batch prefix, continued from a copy of the root's cache rather than from scratch.

:attr:`SlotPass.tokens` counts what was computed (prefix tokens once, each row's rest up to the batch's
last ``<st_pre>``, padding included) against the tokens of the full prompts, so a run can print the
tokens it actually computed per sample. The decisions are made on the host copy of ``input_ids`` (the
collator's), so none of them waits for the device.

Everything runs through ``model(...)`` and the backbone's public cache API, so any Hugging Face
causal LM works; left-padded batches, batches without ``<st_pre>`` and training mode take the plain
forward.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from stllm.models.st_llama import SPLICE_INPUTS, backbone_cache


@dataclass
class TokenCount:
    """Tokens of the full prompts (attention mask, answer included) and tokens the backbone ran."""

    samples: int = 0
    prompt: int = 0
    computed: int = 0

    def per_sample(self) -> str:
        n = max(self.samples, 1)
        return (f"tokens computed per sample {self.computed / n:,.1f} of {self.prompt / n:,.1f} in the prompt "
                f"({self.computed / max(self.prompt, 1):.1%})")


class SlotPass:
    """``(reg_pred, cls_logits)`` of a collated batch, equal to ``model(**batch)``'s heads.

    Keeps the root and last shared prefixes' caches between calls; build one per ``predict`` run (the
    memo is only valid while the model's weights do not change).
    """

    def __init__(self, model, share_prefix: bool = True, min_prefix: int = 8):
        self.model, self.share_prefix, self.min_prefix = model, share_prefix, min_prefix
        self._root: tuple[tuple[int, ...], object] | None = None  # the prefix all batches shared, its cache
        self._prefix: tuple[tuple[int, ...], object] | None = None  # the last batch's prefix, its cache
        self.slot_ids = model.config.slot_token_ids
        self.tokens = TokenCount()

    @torch.inference_mode()
    def __call__(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        model, cfg = self.model, self.model.config
        device = next(model.parameters()).device
        host_ids = batch["input_ids"].cpu()
        host_mask = batch.get("attention_mask")
        host_mask = None if host_mask is None else host_mask.cpu()
        rows = host_ids.shape[0]
        self.tokens.samples += rows
        self.tokens.prompt += int(host_mask.sum()) if host_mask is not None else host_ids.numel()
        st = {k: batch[k].to(device) for k in SPLICE_INPUTS if k in batch}
        right_padded = host_mask is None or bool((host_mask[:, 1:] <= host_mask[:, :-1]).all()
                                                 and host_mask[:, 0].all())
        pre = (host_ids == cfg.st_pre_token_id).any(dim=0) if cfg.st_pre_token_id is not None else None
        if pre is None or not bool(pre.any()) or not right_padded or model.training:
            self.tokens.computed += host_ids.numel()
            mask = None if host_mask is None else host_mask.to(device)
            out = model(input_ids=host_ids.to(device), attention_mask=mask, **st, use_cache=False, logits_to_keep=1)
            return out.reg_pred, out.cls_logits
        host_ids = host_ids[:, : int(pre.nonzero().max()) + 1]  # 1. the tail after the last <st_pre>
        p = self._prefix_len(host_ids)
        self.tokens.computed += rows * (host_ids.shape[1] - p)
        ids = host_ids.to(device)
        if p == 0:  # 2. no mask: pads only see pads
            out = model(input_ids=ids, **st, use_cache=False, logits_to_keep=1)
            return out.reg_pred, out.cls_logits
        cache = copy.deepcopy(self._prefix_cache(tuple(host_ids[0, :p].tolist()), device))  # 3. shared prefix
        cache.batch_repeat_interleave(rows)
        out = model(input_ids=ids[:, p:], **st, past_key_values=cache, use_cache=True, prefill=True, logits_to_keep=1)
        return out.reg_pred, out.cls_logits

    def _prefix_len(self, ids: torch.Tensor) -> int:
        """Length of the prefix all rows share, ending before the first slot token of any row."""
        if not self.share_prefix or ids.shape[0] < 2:
            return 0
        same = (ids == ids[:1]).all(dim=0)
        slot = torch.isin(ids, torch.tensor(self.slot_ids)).any(dim=0)
        stop = ~same | slot
        n = int(stop.long().argmax()) if bool(stop.any()) else ids.shape[1] - 1
        return n if n >= self.min_prefix else 0

    def _run(self, tokens: tuple[int, ...], device, cache=None):
        """The backbone's cache after ``tokens`` at batch size 1, continuing ``cache`` (a copy) if given."""
        self.tokens.computed += len(tokens)
        ids = torch.tensor([tokens], device=device)
        given = {} if cache is None else {self.model._cache_arg: copy.deepcopy(cache)}  # the name this version takes
        out = self.model.backbone(input_ids=ids, **given, use_cache=True, logits_to_keep=1)
        return backbone_cache(out)

    def _prefix_cache(self, key: tuple[int, ...], device):
        """The backbone's cache after the prefix ``key``: the last batch's if it repeats; else the root's
        cache continued by the rest (the root shrinks to what it shares with ``key`` when ``key`` diverges
        inside it, recomputed once; a prefix sharing less than ``min_prefix`` with it runs from scratch)."""
        if self._prefix is not None and self._prefix[0] == key:
            return self._prefix[1]
        if self._root is None:
            self._root = (key, self._run(key, device))
        root = self._root[0]
        shared = next((i for i, (a, b) in enumerate(zip(root, key)) if a != b), min(len(root), len(key)))
        if shared < self.min_prefix:
            cache = self._run(key, device)
        else:
            if shared < len(root):
                self._root = (key[:shared], self._run(key[:shared], device))
            rest = key[len(self._root[0]):]
            cache = self._run(rest, device, self._root[1]) if rest else self._root[1]
        self._prefix = (key, cache)
        return cache
