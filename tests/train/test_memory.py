"""Memory planner: DeepSpeed's estimators for model states, Korthikanti activations, config sizing, CLI."""

from __future__ import annotations

import argparse
import sys

import pytest
import torch
from model_fixtures import tiny_model, tiny_text_config

from stllm.train.memory import (
    GIB,
    PRESETS,
    activation_bytes,
    add_estimate_memory_parser,
    estimate_memory,
    memory_table,
    spec_from_config,
    standard_cases,
)

pytest.importorskip("deepspeed")
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs  # noqa: E402
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs  # noqa: E402

SHAPE = {"hidden_size": 4096, "num_layers": 32}


def states(**kwargs) -> float:
    return estimate_memory(**kwargs).model_states_gb


def test_zero2_full_finetune_states_equal_deepspeeds_estimator():
    params = 1_234_567_890
    est = estimate_memory(params, num_gpus=4, num_nodes=2, zero_stage=2, lora=False, **SHAPE)
    _, gpu_bytes = estimate_zero2_model_states_mem_needs(params, 4, 2, False, 1.5)
    assert gpu_bytes == 2 * params + int(18 * params / 8)  # the formula DeepSpeed documents
    assert est.model_states_gb * GIB == pytest.approx(gpu_bytes, abs=1)
    assert est.trainable_params == est.total_params == params


def test_zero3_full_finetune_states_equal_deepspeeds_estimator():
    spec = PRESETS["vicuna-7b"]
    est = estimate_memory(model="vicuna-7b", num_gpus=8, zero_stage=3, lora=False)
    _, gpu_bytes, _ = estimate_zero3_model_states_mem_needs(
        spec.total_params, spec.largest_layer_params, 8, 1, False, False, True, 1.5
    )
    assert est.model_states_gb * GIB == pytest.approx(gpu_bytes, abs=1)


@pytest.mark.parametrize("lora", [True, False])
def test_zero3_shards_over_gpus(lora):
    one = states(model="vicuna-7b", num_gpus=1, zero_stage=3, lora=lora)
    eight = states(model="vicuna-7b", num_gpus=8, zero_stage=3, lora=lora)
    assert eight < one / 4
    # ZeRO-2 keeps the 16-bit weights replicated, so it shards far less than ZeRO-3
    assert states(model="vicuna-7b", num_gpus=8, zero_stage=2, lora=lora) > eight


def test_lora_zero2_keeps_the_frozen_base_replicated():
    est = estimate_memory(model="vicuna-7b", num_gpus=8, zero_stage=2)
    assert est.model_states_gb * GIB > 2 * PRESETS["vicuna-7b"].backbone_params
    assert est.details["frozen_params"] == PRESETS["vicuna-7b"].total_params - PRESETS["vicuna-7b"].st_trainable


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_lora_needs_less_than_full_finetuning(stage):
    lora = estimate_memory(model="vicuna-7b", num_gpus=8, zero_stage=stage)
    full = estimate_memory(model="vicuna-7b", num_gpus=8, zero_stage=stage, lora=False)
    assert lora.model_states_gb < full.model_states_gb
    assert lora.trainable_params < full.trainable_params / 100
    assert lora.activations_gb == full.activations_gb


def test_lora_trainable_count_matches_add_lora_on_the_tiny_model():
    from stllm.models.lora import add_lora

    model = tiny_model("llama")
    est = estimate_memory(config=model.config, zero_stage=2)
    model_params = sum(p.numel() for p in model.parameters())
    assert est.details["frozen_params"] == model_params - PRESETS["tiny"].st_trainable  # encoders stay frozen
    peft_model = add_lora(model, r=8)
    assert est.trainable_params == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


@pytest.mark.parametrize("stage", [2, 3])
@pytest.mark.parametrize("lora", [True, False])
def test_offload_lowers_gpu_memory(stage, lora):
    kwargs = {"model": "vicuna-7b", "num_gpus": 8, "zero_stage": stage, "lora": lora}
    on, off = estimate_memory(offload=True, **kwargs), estimate_memory(**kwargs)
    assert on.model_states_gb < off.model_states_gb
    assert on.cpu_gb > 0


def test_offload_needs_zero2_or_3():
    with pytest.raises(ValueError, match="offload"):
        estimate_memory(model="tiny", zero_stage=1, offload=True)


def test_activations_grow_linearly_with_micro_batch_and_drop_with_checkpointing():
    act = {b: estimate_memory(model="vicuna-7b", micro_batch=b).activations_gb for b in (1, 2, 4)}
    assert act[2] == pytest.approx(2 * act[1], rel=1e-9)
    assert act[4] == pytest.approx(4 * act[1], rel=1e-9)
    no_ckpt = estimate_memory(model="vicuna-7b", gradient_checkpointing=False).activations_gb
    assert no_ckpt > 10 * act[1]


def test_activation_parts_scale_as_their_tensors_do():
    s, h, n, a, v = 1024, 4096, 32, 32, 32000
    base = activation_bytes(s, 1, h, n, a, v, gradient_checkpointing=False)
    # the logits are one fp32 (seq, vocab) tensor per sample: exactly linear in seq, batch and vocab
    assert base["logits"] == s * v * 4
    assert activation_bytes(2 * s, 3, h, n, a, 2 * v, gradient_checkpointing=False)["logits"] == 12 * base["logits"]
    # the layers hold the (seq x seq) attention scores too: more than linear in seq, linear in layers and batch
    assert activation_bytes(2 * s, 1, h, n, a, v, gradient_checkpointing=False)["layers"] > 2.2 * base["layers"]
    assert activation_bytes(s, 1, h, 2 * n, a, v, gradient_checkpointing=False)["layers"] == 2 * base["layers"]
    # checkpointing keeps one 16-bit (seq, hidden) input per layer: each added layer costs exactly that
    ckpt = [activation_bytes(s, 1, h, k, a, v, gradient_checkpointing=True)["layers"] for k in (8, 16, 24)]
    assert ckpt[2] - ckpt[1] == ckpt[1] - ckpt[0] == 8 * 2 * s * h
    # fp32 layer activations take twice the 16-bit ones; the logits are fp32 either way
    fp32 = activation_bytes(s, 1, h, n, a, v, gradient_checkpointing=False, dtype_bytes=4)
    assert fp32["layers"] == 2 * base["layers"] and fp32["logits"] == base["logits"]


def test_the_parts_add_up_to_the_total_and_fp32_frozen_weights_take_twice_the_bf16_ones():
    for kwargs in ({"zero_stage": 2}, {"zero_stage": 3, "num_gpus": 8}, {"zero_stage": 2, "lora": False}):
        est = estimate_memory(model="vicuna-7b", **kwargs)
        assert est.total_gb == pytest.approx(est.model_states_gb + est.activations_gb + est.overhead_gb, rel=1e-12)
        parts = est.details["activation_bytes"]
        assert est.activations_gb * GIB == pytest.approx(parts["layers"] + parts["logits"], rel=1e-12)
    bf16 = estimate_memory(model="vicuna-7b", zero_stage=2, dtype_bytes=2)
    fp32 = estimate_memory(model="vicuna-7b", zero_stage=2, dtype_bytes=4)
    frozen = bf16.details["frozen_params"]
    assert frozen > 6.7e9  # LoRA: the whole backbone is frozen and replicated under ZeRO-2
    # fp32 frozen weights take 4 bytes, bf16 ones 2: the states grow by the bf16 size of the frozen weights, and
    # the trained part (DeepSpeed's mixed-precision Adam) does not depend on the frozen weights' dtype
    assert (fp32.model_states_gb - bf16.model_states_gb) * GIB == pytest.approx(2 * frozen, abs=1)


def test_a_7b_llama_config_has_its_published_parameter_count():
    from transformers import LlamaConfig

    # meta-llama/Llama-2-7b-hf config.json: 6.74B parameters (untied embeddings, SwiGLU, no biases)
    cfg = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, tie_word_embeddings=False)  # fmt: skip
    spec = spec_from_config(cfg, st_modules=False)
    assert spec.backbone_params == spec.total_params == 6_738_415_616
    assert PRESETS["vicuna-7b"].backbone_params == spec.backbone_params


@pytest.mark.parametrize("flag,value", [
    ("--num_gpus", "0"), ("--num_gpus", "-8"), ("--num_nodes", "0"), ("--gpu_memory_gb", "-80"),
    ("--gpu_memory_gb", "0"), ("--lora_r", "-8"), ("--seq_len", "-2048"), ("--micro_batch", "0"),
])  # fmt: skip
def test_cli_refuses_non_positive_sizes_naming_the_flag(capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        _parser().parse_args(["estimate-memory", f"{flag}={value}"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and value in err


@pytest.mark.parametrize("kwargs,flag", [
    ({"num_gpus": -1}, "--num_gpus"), ({"seq_len": 0}, "--seq_len"), ({"micro_batch": -2}, "--micro_batch"),
    ({"gpu_memory_gb": -1.0}, "--gpu_memory_gb"), ({"lora_r": 0}, "--lora_r"), ({"dtype_bytes": 0}, "dtype_bytes"),
])  # fmt: skip
def test_the_function_refuses_non_positive_sizes_too(kwargs, flag):
    with pytest.raises(ValueError, match=f"{flag} must be > 0"):
        estimate_memory(model="vicuna-7b", **kwargs)


def test_fits_flips_at_the_memory_boundary():
    total = estimate_memory(model="vicuna-7b", num_gpus=8, zero_stage=3, lora=False).total_gb
    assert estimate_memory(model="vicuna-7b", num_gpus=8, zero_stage=3, lora=False, gpu_memory_gb=total).fits
    tight = estimate_memory(model="vicuna-7b", num_gpus=8, zero_stage=3, lora=False, gpu_memory_gb=total - 1e-6)
    assert not tight.fits
    assert not estimate_memory(model="vicuna-7b", lora=False, gpu_memory_gb=80).fits  # 20 B/param on one GPU


def _llama_config(**overrides):
    from transformers import LlamaConfig

    kwargs = dict(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=211,
    )
    return LlamaConfig(**{**kwargs, **overrides})


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(lambda: _llama_config(), id="llama-gqa"),
        pytest.param(lambda: _llama_config(tie_word_embeddings=True), id="llama-tied"),
        pytest.param(lambda: _llama_config(attention_bias=True, mlp_bias=True), id="llama-bias"),
        pytest.param(lambda: tiny_text_config("qwen2"), id="qwen2"),
        pytest.param(lambda: tiny_text_config("gpt2"), id="gpt2-meta"),
    ],
)
def test_config_param_count_equals_the_built_model(config):
    from transformers import AutoModelForCausalLM

    cfg = config()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    spec = spec_from_config(cfg)
    assert spec.total_params == spec.backbone_params == sum(p.numel() for p in model.parameters())
    assert spec.largest_layer_params == max(
        sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()
    )


def test_config_json_path_and_stllm_config(tmp_path):
    cfg = _llama_config()
    cfg.save_pretrained(tmp_path / "my-llama")
    by_path = spec_from_config(tmp_path / "my-llama" / "config.json")
    assert by_path.backbone_params == spec_from_config(cfg).backbone_params
    assert by_path.name == "my-llama"
    model = tiny_model("llama")
    model.config.save_pretrained(tmp_path / "st")
    for source in (model.config, tmp_path / "st"):
        spec = spec_from_config(source)  # an STLlamaConfig: backbone + ST modules
        assert spec.total_params == sum(p.numel() for p in model.parameters())
    assert spec_from_config(model.config.text_config, st_modules=True).total_params == spec.total_params


def test_vicuna_preset_shape():
    from transformers import LlamaConfig

    from stllm import GeoEncoder, GeoEncoderConfig, STEncoder, STEncoderConfig, STLlamaConfig, STLlamaForCausalLM

    spec = PRESETS["vicuna-7b"]
    assert spec.backbone_params == 6_738_415_616  # Llama-2-7B
    # stllm's trainable modules at width 4096, counted on built modules: a zero-layer backbone of the same width
    text = LlamaConfig(hidden_size=4096, intermediate_size=64, num_hidden_layers=0, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=8)  # fmt: skip
    model = STLlamaForCausalLM(STLlamaConfig(text_config=text, st_his_token_id=4, st_pre_token_id=5, geo_token_id=6,
                                             poi_pre_token_id=7))  # fmt: skip
    outside = ("backbone.", "st_encoder.", "geo_encoder.")
    built = sum(p.numel() for n, p in model.named_parameters() if not n.startswith(outside))
    assert spec.st_trainable == built
    encoders = [STEncoder(STEncoderConfig()), GeoEncoder(GeoEncoderConfig())]
    assert spec.st_frozen == sum(p.numel() for m in encoders for p in m.parameters())


def test_model_params_alone_needs_a_shape():
    with pytest.raises(ValueError, match="hidden_size"):
        estimate_memory(10**9)
    est = estimate_memory(10**9, lora=False, **SHAPE)
    assert est.label == "1.00B params" and est.row().startswith("1.00B params")


def test_missing_deepspeed_gives_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed.runtime.zero.stage3", None)
    with pytest.raises(ImportError, match="pip install deepspeed"):
        estimate_memory(model="tiny")


def _parser():
    parser = argparse.ArgumentParser(prog="stllm")
    add_estimate_memory_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def test_cli_prints_a_row(capsys):
    args = _parser().parse_args(
        ["estimate-memory", "--num_gpus", "8", "--gpu_memory_gb", "24", "--zero_stage", "3", "--full", "--offload"]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out.splitlines()
    row = estimate_memory(model="vicuna-7b", num_gpus=8, gpu_memory_gb=24, zero_stage=3, lora=False, offload=True)
    assert out[1] == row.row()
    assert "full" in out[1] and "3+off" in out[1] and "8x24GB" in out[1]


def test_cli_table_and_config(capsys, tmp_path):
    args = _parser().parse_args(["estimate-memory", "--table", "--seq_len", "1024"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert out.strip() == memory_table(standard_cases(seq_len=1024, offload=False, micro_batch=1, lora_r=8))
    assert len(out.strip().splitlines()) == 1 + 12 + 1
    assert "seq_len 1024" in out
    _llama_config().save_pretrained(tmp_path / "bb")
    args = _parser().parse_args(["estimate-memory", "--config", str(tmp_path / "bb"), "--zero-stage", "0"])
    assert args.func(args) == 0
    assert "bb + ST" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        _parser().parse_args(["estimate-memory", "--zero_stage", "4"])


def test_lora_zero3_states_hold_the_frozen_shard_and_little_else():
    spec, frozen_bytes = PRESETS["vicuna-7b"], 2 * PRESETS["vicuna-7b"].total_params  # bf16 frozen weights
    for gpus in (2, 8, 32):
        est = estimate_memory(model="vicuna-7b", num_gpus=gpus, zero_stage=3)
        states = est.model_states_gb * GIB
        # at least this GPU's shard of the frozen weights; at most that, one gathered module and 20 B/trained param
        assert frozen_bytes / gpus < states < frozen_bytes / gpus + 2 * spec.largest_layer_params + 20 * 1.5 * (
            est.trainable_params)
    offloaded = estimate_memory(model="vicuna-7b", num_gpus=8, zero_stage=3, offload=True)
    assert offloaded.model_states_gb * GIB < frozen_bytes / 8  # the frozen shards moved to the CPU
    assert offloaded.cpu_gb * GIB > frozen_bytes / 8


def test_tiny_preset_matches_its_built_backbone():
    from transformers import AutoModelForCausalLM

    backbone = AutoModelForCausalLM.from_config(tiny_text_config("llama"))
    assert PRESETS["tiny"].backbone_params == sum(p.numel() for p in backbone.parameters())
    assert PRESETS["tiny"].total_params == sum(p.numel() for p in tiny_model("llama").parameters())


def test_a_corrupt_config_file_is_named(tmp_path):
    from stllm.train.memory import load_config

    bad = tmp_path / "config.json"
    bad.write_text('{"hidden_size": 64,\n')
    with pytest.raises(ValueError, match="config.json.*not valid JSON.*line 2"):
        load_config(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        load_config(tmp_path)
