"""On-device intent prediction: the next intent read at ``<intent_pre>`` by :class:`IntentHead` in one pass.

:class:`STLlamaForIntent` is :class:`~stllm.models.st_llama.STLlamaForCausalLM` (its backbone plumbing, config,
checkpoints and LoRA) with one more head, kept in this file so the shared model file stays as it is. The prompt is
the user's recent events as text; the head reads the decoder's hidden state at the single ``<intent_pre>`` token
(the prompt's last real token) and scores every intent from it and from the PITuning-style event-to-intent
transition features of that intent (:data:`stllm.data.intent.INTENT_FEATURES`: population P(intent | last event,
last intent, time), the user's own P(intent | last intent) and P(intent)).

Why features next to the text: a small on-device LM cannot count a user's history through attention, and the
transition counts are what the strong baselines (user / population Markov) live on; the LM's query decides how
much each count is trusted in this context (a per-sample gate over the features) and adds what the event text
says beyond them. Only the decoder runs (no LM head), so a prediction costs one pass over the prompt.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from stllm.data.loaders import read_json
from stllm.models.checkpoint import require_checkpoint_files
from stllm.models.configuration import STLlamaConfig
from stllm.models.st_llama import STLlamaForCausalLM

# The ST encoders, projectors and flow/POI heads every STLlamaForCausalLM carries are unused by intent models:
# built at these minimal sizes (a few thousand parameters) so that the on-device student is not mostly dead weight.
UNUSED_MODULE_SIZES = dict(
    st_encoder_config=dict(in_channels=1, out_channels=1, input_window=2, horizon=1, layers=1, residual_channels=2,
                           conv_channels=2, skip_channels=2, end_channels=2, kernel_set=(2,), num_tokens=1,
                           token_dim=2, normalize=False),
    geo_encoder_config=dict(num_scales=1, hidden_dim=2, out_dim=2),
    head_dim=2,
)


class IntentHead(nn.Module):
    """``query (B, H), features (B, C, F) -> logits (B, C)``.

    logit_c = class_c . q + sum_f gate_f(q) feature_{c,f} + MLP(feature_c), with q = GELU(W query): the linear
    feature path starts where the Markov baselines are and the gate lets the context re-weigh it."""

    def __init__(self, hidden_size: int, n_classes: int, n_features: int, head_dim: int = 32):
        super().__init__()
        self.n_classes, self.n_features = n_classes, n_features
        self.query = nn.Linear(hidden_size, head_dim)
        self.classes = nn.Linear(head_dim, n_classes)
        self.gate = nn.Linear(head_dim, n_features)
        self.mlp = nn.Sequential(nn.Linear(n_features, 16), nn.GELU(), nn.Linear(16, 1))

    def forward(self, query: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        b, c, f = features.shape
        if c != self.n_classes or f != self.n_features or query.shape[0] != b:
            raise ValueError(f"intent_features must be (B, {self.n_classes}, {self.n_features}) with one "
                             f"<intent_pre> per row: got features {tuple(features.shape)}, {query.shape[0]} queries")
        feats = features.to(self.query.weight)
        q = F.gelu(self.query(query.to(self.query.weight.dtype)))
        linear = (feats * (1.0 + self.gate(q))[:, None, :]).mean(-1)
        return self.classes(q) + linear + self.mlp(feats).squeeze(-1)


@dataclass
class IntentOutput(ModelOutput):
    """``intent_logits`` (B, C); ``loss`` = ``intent_loss`` (cross-entropy, logit-adjusted when the config has
    ``intent_loss_offsets``) when targets are given."""

    loss: torch.FloatTensor | None = None
    intent_loss: torch.FloatTensor | None = None
    intent_logits: torch.FloatTensor | None = None


def prior_logit_offsets(targets: np.ndarray, n_classes: int, tau: float, pseudo: float = 1.0) -> list[float]:
    """``tau * log prior`` per intent, the prior being the class shares of ``targets`` (the *training* targets; one
    ``pseudo`` count per intent keeps an unseen intent finite). Added to the logits inside the cross-entropy only
    (Menon et al. 2021's logit-adjusted loss), so the raw logits the model predicts with need not spend their margin
    on frequent intents: the balanced-error-optimal decision, which raises macro F1 without fitted offsets."""
    targets = np.asarray(targets, dtype=np.int64)
    if targets.size and (targets.min() < 0 or targets.max() >= n_classes):
        raise ValueError(f"targets must be intent ids in [0, {n_classes}), got {targets.min()}..{targets.max()}")
    if pseudo <= 0:
        raise ValueError(f"pseudo must be > 0, got {pseudo}")
    counts = np.bincount(targets, minlength=n_classes).astype(np.float64) + pseudo
    return (tau * np.log(counts / counts.sum())).tolist()


def intent_config_kwargs(n_classes: int, n_features: int, head_dim: int = 32) -> dict:
    """Config fields of an intent model (spread into :class:`STLlamaConfig` or ``from_backbone``)."""
    return dict(intent_classes=n_classes, intent_features=n_features, intent_head_dim=head_dim, lm_loss_weight=0.0,
                **UNUSED_MODULE_SIZES)


class STLlamaForIntent(STLlamaForCausalLM):
    """STLlamaForCausalLM + :class:`IntentHead` at ``<intent_pre>`` (config: ``intent_pre_token_id``,
    ``intent_classes``, ``intent_features``, ``intent_head_dim``)."""

    def __init__(self, config: STLlamaConfig, backbone=None):
        super().__init__(config, backbone)
        for name in ("intent_classes", "intent_features"):
            if not getattr(config, name, None):
                raise ValueError(f"an intent model needs config.{name}")
        self.intent_head = IntentHead(config.hidden_size, config.intent_classes, config.intent_features,
                                      getattr(config, "intent_head_dim", 32))

    def intent_query(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                     check: bool = True) -> torch.Tensor:
        """The decoder's hidden state ``(B, H)`` at each row's ``<intent_pre>`` (one per row; ``check`` says so)."""
        token = getattr(self.config, "intent_pre_token_id", None)
        if token is None:
            raise ValueError("config.intent_pre_token_id is not set (stllm.tokens.add_intent_token)")
        at = input_ids == token
        if check:
            self._check_input_ids(input_ids)
            per_row = at.sum(dim=1)
            if (per_row != 1).any():
                bad = int(torch.nonzero(per_row != 1)[0, 0])
                raise ValueError(f"intent prediction needs one <intent_pre> per prompt; row {bad} has "
                                 f"{int(per_row[bad])}")
        embeds = self.get_input_embeddings()(input_ids)
        hidden = self.backbone.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask,
                                             use_cache=False).last_hidden_state
        pos = at.to(torch.int64).argmax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), pos]

    def forward(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None,
                intent_features: torch.Tensor | None = None, intent_targets: torch.LongTensor | None = None,
                **kwargs) -> IntentOutput:
        kwargs.pop("num_items_in_batch", None)
        if intent_features is None:
            raise ValueError("intent_features (B, C, F) are required: the transition features of every intent")
        logits = self.intent_head(self.intent_query(input_ids, attention_mask), intent_features.to(input_ids.device))
        loss = None
        if intent_targets is not None:
            if intent_targets.shape != logits.shape[:1]:
                raise ValueError(f"intent_targets has shape {tuple(intent_targets.shape)}, expected "
                                 f"({logits.shape[0]},)")
            scored = logits.float()
            offsets = getattr(self.config, "intent_loss_offsets", None)
            if offsets is not None:  # logit-adjusted training loss; predictions stay the plain logits
                if len(offsets) != scored.shape[-1]:
                    raise ValueError(f"config.intent_loss_offsets has {len(offsets)} values for "
                                     f"{scored.shape[-1]} intents")
                scored = scored + torch.tensor(offsets, dtype=scored.dtype, device=scored.device)
            loss = F.cross_entropy(scored, intent_targets.to(logits.device))
        return IntentOutput(loss=loss, intent_loss=loss, intent_logits=logits)


class IntentLogits(nn.Module):
    """``(input_ids, attention_mask, intent_features) -> logits``: the traceable prediction path (ONNX export)."""

    def __init__(self, model: STLlamaForIntent):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, intent_features: torch.Tensor):
        return self.model.intent_head(self.model.intent_query(input_ids, attention_mask, check=False), intent_features)


@torch.inference_mode()
def run_intent(model: STLlamaForIntent, collator, dataset, batch_size: int = 64, what: str = "logits",
               progress: bool = False) -> torch.Tensor:
    """Intent ``logits`` (N, C) or the head's input ``query`` (N, H) of every sample of ``dataset`` (batched, one
    pass each). The model is put in eval mode and left there."""
    if what not in ("logits", "query"):
        raise ValueError(f"what must be 'logits' or 'query', got {what!r}")
    from tqdm.auto import tqdm

    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in tqdm(range(0, len(dataset), batch_size), disable=not progress, desc=f"intent {what}"):
        batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        query = model.intent_query(ids, mask)
        out.append(query if what == "query" else model.intent_head(query, batch["intent_features"].to(device)))
    return torch.cat(out).float().cpu() if out else torch.zeros(0)


INTENT_DATA_FILE = "intent_data.json"
REQUIRED = ("config.json", "tokenizer_config.json", INTENT_DATA_FILE)


def read_intent_record(path: str | os.PathLike) -> dict:
    """The ``intent_data.json`` of a checkpoint directory, after checking the directory holds a whole checkpoint."""
    path = require_checkpoint_files(path, REQUIRED, "train-intent")
    return read_json(path / INTENT_DATA_FILE, "the intent data record")


def load_intent_checkpoint(path: str | os.PathLike):
    """``(model, tokenizer, record)`` of a ``stllm train-intent`` (or distilled student) checkpoint."""
    record = read_intent_record(path)
    model = STLlamaForIntent.from_pretrained(path).eval()
    if getattr(model.config, "intent_pre_token_id", None) is None:
        raise ValueError(f"checkpoint {path}: config field 'intent_pre_token_id' missing: not an intent model")
    from transformers import AutoTokenizer

    return model, AutoTokenizer.from_pretrained(path), record
