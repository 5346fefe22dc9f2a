import pytest
import torch

from stllm import GeoEncoder, STEncoder, STEncoderConfig, load_encoder, save_encoder


def test_round_trip_preserves_config_and_outputs(tmp_path):
    enc = STEncoder(STEncoderConfig(in_channels=3, out_channels=3, num_tokens=3)).eval()
    save_encoder(enc, tmp_path / "st", extra={"note": "unit"})
    back = load_encoder(tmp_path / "st").eval()
    assert back.config == enc.config
    x = torch.randn(2, 12, 4, 3)
    assert torch.equal(enc(x).tokens, back(x).tokens)
    geo = GeoEncoder().eval()
    save_encoder(geo, tmp_path / "geo")
    c = torch.tensor([[40.7, -74.0]])
    assert torch.equal(load_encoder(tmp_path / "geo")(c), geo(c))


def test_missing_file_is_named(tmp_path):
    save_encoder(STEncoder(), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_encoder(tmp_path)


def _disk_full_after_a_partial_write(tensors, filename, metadata=None):
    with open(filename, "wb") as f:
        f.write(b"\0" * 64)
    raise OSError(28, "No space left on device")


def test_failed_save_keeps_the_previous_encoder(tmp_path, monkeypatch):
    first = STEncoder(STEncoderConfig(num_tokens=3)).eval()
    save_encoder(first, tmp_path / "enc")
    config = (tmp_path / "enc" / "encoder_config.json").read_bytes()
    monkeypatch.setattr("stllm.encoders.io.save_file", _disk_full_after_a_partial_write)
    with pytest.raises(OSError, match="No space left"):
        save_encoder(STEncoder(STEncoderConfig(num_tokens=2)), tmp_path / "enc")
    with pytest.raises(OSError, match="No space left"):
        save_encoder(GeoEncoder(), tmp_path / "new")
    assert not (tmp_path / "new").exists()
    assert (tmp_path / "enc" / "encoder_config.json").read_bytes() == config
    x = torch.randn(2, 12, 4, 2)
    assert torch.equal(load_encoder(tmp_path / "enc").eval()(x).tokens, first(x).tokens)
    assert not [p for d in (tmp_path, tmp_path / "enc") for p in d.iterdir() if "saving" in p.name]


def test_truncated_weights_are_named(tmp_path):
    save_encoder(STEncoder(), tmp_path)
    weights = tmp_path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors: truncated"):
        load_encoder(tmp_path)
