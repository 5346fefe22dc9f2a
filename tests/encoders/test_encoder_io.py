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
