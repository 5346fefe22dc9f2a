"""Tiny models, batches and tokenizers shared by the tests (width 64, two layers, built from configs)."""

from __future__ import annotations

import torch
from transformers import GPT2Config, LlamaConfig, Qwen2Config

from stllm import STLlamaConfig, STLlamaForCausalLM

VOCAB = 300
HIS, PRE, GEO, POI = 296, 297, 298, 299


# width 64, two layers, grouped-query attention: the shape every tiny Llama-like backbone shares
LLAMA_LIKE = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    vocab_size=VOCAB,
)


def save_checkin_llama(folder, hidden_size: int = 64):
    """A randomly initialised tiny Llama and an offline BPE on check-in text saved as a Hugging Face folder:
    what ``--model_name_or_path`` / ``--backbone`` read. Returns the model."""
    from transformers import LlamaForCausalLM

    from stllm.data import train_tokenizer

    tok = train_tokenizer([f"Here are a user's check-ins: Monday 08:{m:02d}, Coffee Shop, Office, Bar, Gym, Park."
                           for m in range(60)], vocab_size=300)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**{**LLAMA_LIKE, "hidden_size": hidden_size,
                                            "intermediate_size": 2 * hidden_size, "vocab_size": len(tok)}))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model


def tiny_text_config(kind: str = "llama"):
    if kind == "llama":
        return LlamaConfig(**LLAMA_LIKE)
    if kind == "qwen2":
        return Qwen2Config(**LLAMA_LIKE)
    if kind == "gpt2":
        return GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0)
    raise ValueError(kind)


def tiny_model(kind: str = "llama", seed: int = 0, **config_kwargs) -> STLlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = STLlamaConfig(
        text_config=tiny_text_config(kind),
        st_his_token_id=HIS,
        st_pre_token_id=PRE,
        geo_token_id=GEO,
        poi_pre_token_id=POI,
        **config_kwargs,
    )
    return STLlamaForCausalLM(cfg).eval()


def make_batch(
    batch: int = 3,
    length: int = 24,
    slots: int = 2,
    his_at=(2, 5, 9),
    pre_at=(12, 15, 18),
    pad: int = 0,
    padding_side: str = "right",
    windows: int = 2,
    regions: int = 7,
    channels: int = 2,
    seed: int = 0,
) -> dict:
    """One history and one prediction placeholder per sample, at sample-specific positions.

    ``pad`` tokens of padding are added to every sample after the first, on ``padding_side``.
    """
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, HIS - 1, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    for b in range(batch):
        ids[b, his_at[b] : his_at[b] + slots] = HIS
        ids[b, pre_at[b] : pre_at[b] + slots] = PRE
    if pad:
        ids = torch.cat([ids, torch.zeros(batch, pad, dtype=torch.long)], dim=1)
        mask = torch.cat([mask, torch.zeros(batch, pad, dtype=torch.long)], dim=1)
        mask[0, length:] = 1  # sample 0 is the longest
        ids[0, length:] = torch.randint(3, HIS - 1, (pad,), generator=g)
        if padding_side == "left":
            for b in range(1, batch):
                ids[b] = torch.roll(ids[b], pad)
                mask[b] = torch.roll(mask[b], pad)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "st_values": torch.randn(windows, 12, regions, channels, generator=g),
        "st_window": torch.randint(0, windows, (batch,), generator=g),
        "st_region": torch.randint(0, regions, (batch,), generator=g),
    }


def tiny_word_tokenizer(vocab_size: int = VOCAB):
    """A word-level tokenizer over ``w0 .. w{n}`` with pad/unk/bos/eos, built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate(specials + [f"w{i}" for i in range(vocab_size - len(specials))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def trained_lora(kind: str = "llama"):
    """A LoRA-wrapped tiny model after three AdamW steps (so adapters, heads and slot rows moved), in eval
    mode, and the batch it trained on."""
    from stllm.models.lora import add_lora

    peft_model = add_lora(tiny_model(kind).train(), r=4, dropout=0.0)
    b = make_batch()
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        peft_model(**b, labels=b["input_ids"], reg_targets=torch.randn(3, 12, 2)).loss.backward()
        opt.step()
        opt.zero_grad()
    return peft_model.eval(), b


def train_tiny_run(out, *flags: str):
    """``stllm train`` in-process into ``out`` with the tiny defaults every checkpoint fixture shares (batch 8, no
    intermediate saves, no progress bar) plus ``flags`` (city, context, steps...); returns ``out``."""
    from stllm.train.arguments import parse_args
    from stllm.train.train_mem import train

    train(*parse_args(["--output_dir", str(out), *flags, "--per_device_train_batch_size", "8", "--save_strategy",
                       "no", "--disable_tqdm", "true"]))  # fmt: skip
    return out
