"""stllm demo --backbone: refused before any work when it cannot apply; its flags reach stage 2 last."""

import pytest

from stllm.cli import main
from stllm.demo import resolve_preset
from stllm.train.arguments import parse_args


@pytest.mark.parametrize("flags, message", [
    (["--data", "nyc-gen", "--backbone", "{tmp}"], "--backbone applies to the flow/event, next-POI and mobility demos"),
    (["--data", "tokyo-intent", "--backbone", "{tmp}"], "--backbone applies to the flow/event, next-POI and mobility"),
    (["--data", "next-poi", "--val_region_fraction", "0.2"], "--val_region_fraction applies to the flow/event demos"),
    (["--quick", "--backbone", "{tmp}/absent"], "--backbone {tmp}/absent: no such model folder or .gguf file"),
])  # fmt: skip
def test_demo_backbone_refused_before_any_work(flags, message, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--no_progress", "--output_dir", str(out),
                 *(f.format(tmp=tmp_path) for f in flags)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith(f"stllm demo: error: {message.format(tmp=tmp_path)}") and not out.exists()


def test_extra_flags_override_the_preset_defaults(tmp_path):
    argv, _, _ = resolve_preset(tmp_path, quick=True, extra_flags=("--per_device_train_batch_size", "4",
                                                                   "--eval_on_start", "false"))  # fmt: skip
    _, _, train_args = parse_args(["--output_dir", str(tmp_path / "m"), *argv])
    assert train_args.per_device_train_batch_size == 4  # the preset says 16
    assert train_args.eval_on_start is False  # the default is True


def test_next_poi_demo_trains_lora_on_the_given_backbone(tmp_path, capsys):
    """--backbone reaches the next-POI demo: the model is the saved backbone with LoRA (its frozen weights as
    saved), not the demo's own tiny Llama."""
    import torch
    from model_fixtures import save_checkin_llama

    from stllm import STLlamaForCausalLM

    llama = save_checkin_llama(tmp_path / "llama", hidden_size=48)
    out = tmp_path / "demo"
    assert main(["demo", "--data", "next-poi", "--quick", "--no_progress", "--output_dir", str(out),
                 "--backbone", str(tmp_path / "llama")]) == 0  # fmt: skip
    assert f"{tmp_path / 'llama'}, LoRA" in capsys.readouterr().out
    assert (out / "model" / "adapter_model.safetensors").is_file()
    model = STLlamaForCausalLM.from_pretrained(out / "model")
    assert model.config.text_config.hidden_size == 48  # the demo's tiny Llama is 64 wide
    w = "model.layers.0.mlp.down_proj.weight"  # not a LoRA target
    assert torch.equal(model.backbone.state_dict()[w], llama.state_dict()[w])
