"""LoRA checkpoints: adapter + config + base weights reload through from_pretrained."""

import pytest
import torch
from model_fixtures import tiny_model, trained_lora

from stllm import STLlamaForCausalLM
from stllm.models.checkpoint import BASE_WEIGHTS, base_state_dict, is_lora_checkpoint, save_lora_extras


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_lora_checkpoint_reloads_to_the_same_predictions(tmp_path, kind):
    peft_model, b = trained_lora(kind)
    with torch.no_grad():
        ref = peft_model(**b)
    peft_model.save_pretrained(tmp_path)
    save_lora_extras(peft_model, tmp_path)
    assert is_lora_checkpoint(tmp_path)
    back = STLlamaForCausalLM.from_pretrained(tmp_path)
    if kind == "llama":  # untied embeddings: adapter merged into a plain STLlamaForCausalLM
        assert type(back) is STLlamaForCausalLM
    with torch.no_grad():
        out = back(**b)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.reg_pred, ref.reg_pred, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out.reg_pred, tiny_model(kind)(**b).reg_pred)  # training changed something


def test_base_state_has_plain_names_and_skips_adapters():
    peft_model, _ = trained_lora("llama")
    names = set(base_state_dict(peft_model))
    plain = set(tiny_model("llama").state_dict())
    assert names == plain
    assert not any("lora_" in n or "modules_to_save" in n for n in names)


def test_missing_base_weights_means_not_an_stllm_checkpoint(tmp_path):
    peft_model, _ = trained_lora("llama")
    peft_model.save_pretrained(tmp_path)
    save_lora_extras(peft_model, tmp_path)
    (tmp_path / BASE_WEIGHTS).unlink()
    assert not is_lora_checkpoint(tmp_path)


def _cut_in_half(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_weights_are_named(tmp_path):
    tiny_model("llama").save_pretrained(tmp_path / "full")
    _cut_in_half(tmp_path / "full" / "model.safetensors")
    with pytest.raises(ValueError, match=r"full/model.safetensors: truncated .*save or copy it again"):
        STLlamaForCausalLM.from_pretrained(tmp_path / "full")
    peft_model, _ = trained_lora("llama")
    for name in (BASE_WEIGHTS, "adapter_model.safetensors"):
        peft_model.save_pretrained(tmp_path / name)
        save_lora_extras(peft_model, tmp_path / name)
        _cut_in_half(tmp_path / name / name)
        with pytest.raises(ValueError, match=f"{name}: truncated"):
            STLlamaForCausalLM.from_pretrained(tmp_path / name)


@pytest.mark.parametrize("missing", [BASE_WEIGHTS, "adapter_model.safetensors"])
def test_missing_lora_file_is_named(tmp_path, missing):
    peft_model, _ = trained_lora("llama")
    peft_model.save_pretrained(tmp_path)
    save_lora_extras(peft_model, tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(FileNotFoundError, match=f"incomplete LoRA checkpoint: .* not {missing}"):
        STLlamaForCausalLM.from_pretrained(tmp_path)
