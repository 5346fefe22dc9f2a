"""The special tokens of stllm and how they enter a tokenizer and a backbone.

Prompts carry human-readable placeholders (``<ST_HIS>``, ``<ST_PRE>``, ``<GEO>``); the collator
expands each into ``slots`` copies of the matching *slot token* (``<st_his>``, ``<st_pre>``,
``<geo>``). Only slot tokens reach the model, and their ids live in ``STLlamaConfig`` -- never
hard-coded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

# Human-readable placeholders written in prompt text.
ST_HIS_PLACEHOLDER = "<ST_HIS>"
ST_PRE_PLACEHOLDER = "<ST_PRE>"
GEO_PLACEHOLDER = "<GEO>"
POI_PRE_PLACEHOLDER = "<POI_PRE>"
MOB_PRE_PLACEHOLDER = "<MOB_PRE>"

# Slot tokens: added to the vocabulary as special tokens.
ST_HIS_TOKEN = "<st_his>"
ST_PRE_TOKEN = "<st_pre>"
GEO_TOKEN = "<geo>"
POI_PRE_TOKEN = "<poi_pre>"  # where the candidate head reads (next-POI): one per prompt
SLOT_TOKENS = (ST_HIS_TOKEN, ST_PRE_TOKEN, GEO_TOKEN, POI_PRE_TOKEN)
# where the cell-choice head reads (long-term mobility): one per target row. Kept out of SLOT_TOKENS so
# tokenizers saved before it existed still pass every collator's slot-token check; add_mobility_token adds it.
MOB_PRE_TOKEN = "<mob_pre>"
# where the intent head reads (on-device intent prediction): one per prompt; kept out of SLOT_TOKENS like <mob_pre>
INTENT_PRE_TOKEN = "<intent_pre>"

PLACEHOLDER_TO_SLOT = {
    ST_HIS_PLACEHOLDER: ST_HIS_TOKEN,
    ST_PRE_PLACEHOLDER: ST_PRE_TOKEN,
    GEO_PLACEHOLDER: GEO_TOKEN,
    POI_PRE_PLACEHOLDER: POI_PRE_TOKEN,
}


@dataclass(frozen=True)
class STTokenIds:
    """Ids of the slot tokens in one tokenizer; spread into ``STLlamaConfig(**ids.as_config())``."""

    st_his_token_id: int
    st_pre_token_id: int
    geo_token_id: int
    poi_pre_token_id: int

    def as_config(self) -> dict[str, int]:
        return {
            "st_his_token_id": self.st_his_token_id,
            "st_pre_token_id": self.st_pre_token_id,
            "geo_token_id": self.geo_token_id,
            "poi_pre_token_id": self.poi_pre_token_id,
        }


def add_st_tokens(tokenizer, model=None) -> STTokenIds:
    """Add the slot tokens to ``tokenizer`` (idempotent) and return their ids.

    When ``model`` (any HF model with input embeddings) is given, its embeddings are resized to the
    tokenizer length, new rows initialised to the mean of the existing rows (so the new tokens start
    as an "average word" rather than noise that would dominate the first attention layers).
    """
    missing = [t for t in SLOT_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        logging.getLogger("stllm").warning("tokenizer lacked the slot tokens %s: adding them", missing)
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    ids = STTokenIds(*(tokenizer.convert_tokens_to_ids(t) for t in SLOT_TOKENS))
    if model is not None:
        resize_with_mean_rows(model, len(tokenizer))
    return ids


@torch.no_grad()
def resize_with_mean_rows(model, new_size: int) -> None:
    """Grow input (and untied output) embeddings to ``new_size``; new rows = mean of the old rows."""
    old = model.get_input_embeddings().weight.shape[0]
    if new_size <= old:
        return
    model.resize_token_embeddings(new_size, mean_resizing=False)
    for emb in {
        id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None
    }.values():
        emb.weight[old:] = emb.weight[:old].mean(dim=0, keepdim=True)


def add_mobility_token(tokenizer, model=None) -> int:
    """Add ``<mob_pre>`` to ``tokenizer`` (idempotent; resize ``model``'s embeddings like :func:`add_st_tokens`)
    and return its id."""
    return add_special_token(tokenizer, MOB_PRE_TOKEN, model)


def add_intent_token(tokenizer, model=None) -> int:
    """Add ``<intent_pre>`` to ``tokenizer`` (idempotent; resize ``model``'s embeddings like :func:`add_st_tokens`)
    and return its id."""
    return add_special_token(tokenizer, INTENT_PRE_TOKEN, model)


def add_special_token(tokenizer, token: str, model=None) -> int:
    """Add one special ``token`` outside :data:`SLOT_TOKENS` (idempotent), resize ``model``'s embeddings with
    mean rows when given, and return the token's id."""
    if token not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [token]}, replace_extra_special_tokens=False)
    if model is not None:
        resize_with_mean_rows(model, len(tokenizer))
    return int(tokenizer.convert_tokens_to_ids(token))
