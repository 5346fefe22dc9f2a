import torch

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
