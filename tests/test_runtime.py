import pytest
import torch
from model_fixtures import make_batch, tiny_model

from stllm import runtime


def test_cpu_falls_back_to_sdpa_fp32_gloo(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rt = runtime.detect_runtime()
    assert (rt.device, rt.attn_implementation, rt.dtype, rt.dist_backend) == ("cpu", "sdpa", torch.float32, "gloo")
    assert "SDPA" in rt.log_line() or "sdpa" in rt.log_line()


def test_gpu_picks_flash_attention_only_when_installed(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    monkeypatch.setattr(runtime, "has_package", lambda name: name == "flash_attn")
    rt = runtime.detect_runtime()
    assert (rt.attn_implementation, rt.dtype, rt.dist_backend) == ("flash_attention_2", torch.bfloat16, "nccl")
    monkeypatch.setattr(runtime, "has_package", lambda name: False)
    rt = runtime.detect_runtime()
    assert rt.attn_implementation == "sdpa" and "not installed" in rt.reason


def test_inference_device_auto_takes_the_cpu_without_cuda_and_a_missing_gpu_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.inference_device("auto") == torch.device("cpu")
    assert runtime.inference_dtype("auto", torch.device("cpu")) == torch.float32
    for spec, words in (("cuda", "no CUDA device"), ("cuda:1", "no CUDA device"), ("tpu-ish", "not a device")):
        with pytest.raises(ValueError, match=f"--device {spec!r}|--device {spec}: .*{words}|{words}"):
            runtime.inference_device(spec)
    with pytest.raises(ValueError, match="--dtype 'half'"):
        runtime.inference_dtype("half", torch.device("cpu"))


def test_inference_dtype_auto_on_a_gpu_is_bf16_or_fp16_without_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert runtime.inference_dtype("auto", torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert runtime.inference_dtype("auto", torch.device("cuda")) == torch.float16
    assert runtime.inference_dtype("fp32", torch.device("cuda")) == torch.float32


def test_half_precision_backbone_keeps_encoder_and_heads_in_fp32_and_predicts_close_to_fp32():
    b = make_batch()
    model = tiny_model()
    with torch.no_grad():
        torch.nn.init.normal_(model.reg_head.out.weight, std=0.5)  # heads start at zero: make them read the backbone
        want = model(**b).reg_pred
        runtime.place_for_inference(model, torch.device("cpu"), torch.bfloat16)
        got = model(**b).reg_pred
    dtypes = {name.split(".")[0]: p.dtype for name, p in model.named_parameters()}
    assert dtypes["backbone"] == torch.bfloat16
    assert {dtypes[m] for m in ("st_encoder", "st_projector", "reg_head", "cls_head")} == {torch.float32}
    assert got.dtype == torch.float32 and not torch.equal(got, want)  # the backbone did run in bf16
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.05)


def test_trainer_flags_train_where_evaluation_runs_and_refuse_one_gpu_of_several(tmp_path):
    from stllm.train.arguments import parse_args

    assert runtime.trainer_flags(torch.device("cpu"), torch.float32) == ["--use_cpu", "true"]
    assert runtime.trainer_flags(torch.device("cuda"), torch.bfloat16) == ["--bf16", "true"]
    assert runtime.trainer_flags(torch.device("cuda"), torch.float16) == ["--fp16", "true"]
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES=1"):
        runtime.trainer_flags(torch.device("cuda:1"), torch.bfloat16)
    _, _, train_args = parse_args(["--output_dir", str(tmp_path), *runtime.trainer_flags(torch.device("cpu"),
                                                                                         torch.bfloat16)])
    assert train_args.use_cpu and train_args.bf16 and not train_args.fp16
