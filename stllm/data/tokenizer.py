"""An offline byte-level BPE tokenizer for tests and the demo (users bring their Llama tokenizer).

Built with the ``tokenizers`` library, wrapped as a ``PreTrainedTokenizerFast`` with bos/eos/pad/unk,
the slot tokens of :mod:`stllm.tokens` as special tokens (always one token each, never merged into
neighbouring text) and a Vicuna-style chat template.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from stllm.tokens import SLOT_TOKENS

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"

# Vicuna v1.1 as a chat template; identical to ChatFormatter's plain fallback.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %} USER: {{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %} ASSISTANT: {{ message['content'] }}{{ eos_token }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2000, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts``; every byte is in the alphabet, so nothing is ever <unk>."""
    specials = [UNK, BOS, EOS, PAD, *SLOT_TOKENS]
    if vocab_size < 256 + len(specials):
        raise ValueError(f"vocab_size must be at least {256 + len(specials)} (bytes + special tokens)")
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    from transformers import PreTrainedTokenizerFast  # heavy import, only when a tokenizer is built

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        extra_special_tokens=list(SLOT_TOKENS),
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 20,
    )
