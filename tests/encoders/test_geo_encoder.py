import pytest
import torch

from stllm import GeoEncoder, GeoEncoderConfig
from stllm.encoders.geo_encoder import multiscale_features


def test_shape_keeps_leading_dims():
    enc = GeoEncoder(GeoEncoderConfig(out_dim=32))
    assert enc(torch.tensor([[[40.7, -74.0]] * 3] * 2)).shape == (2, 3, 32)


def test_features_are_continuous_across_the_antimeridian():
    """The same point at +180 and -180 maps to the same features, and distances across the line
    behave like distances on one side of it (raw longitude would jump by 360 degrees)."""
    cfg = GeoEncoderConfig()

    def f(lon):
        return multiscale_features(torch.tensor([10.0, lon], dtype=torch.float64), cfg)

    assert (f(180.0) - f(-180.0)).abs().max() < 1e-6
    across = (f(179.9999) - f(-179.9999)).norm()  # 0.0002 degrees apart across the line
    same_side = (f(179.9999) - f(179.9997)).norm()  # 0.0002 degrees apart on one side
    assert abs(across - same_side) < 0.05 * same_side
    assert (f(179.9999) - f(179.9)).norm() > 2 * across


def test_scales_resolve_blocks_and_cities():
    """Points 50 m apart differ at the finest scales and agree at the coarsest."""
    cfg = GeoEncoderConfig(num_scales=16)
    a = multiscale_features(torch.tensor([40.7000, -74.0]), cfg)
    b = multiscale_features(torch.tensor([40.7004, -74.0]), cfg)  # ~45 m north
    s = cfg.num_scales
    sin_a, sin_b = a[3 : 3 + 3 * s].view(3, s), b[3 : 3 + 3 * s].view(3, s)
    assert (sin_a[:, 0] - sin_b[:, 0]).abs().max() > 0.5  # 100 m wavelength
    assert (sin_a[:, -1] - sin_b[:, -1]).abs().max() < 1e-3  # 1000 km wavelength


@pytest.mark.parametrize(
    "coords,match",
    [([[116.4, 39.9]], "given as \\(lon, lat\\)"), ([[40.0, 200.0]], "longitude"), ([[float("nan"), 1.0]], "NaN")],
)
def test_bad_coordinates(coords, match):
    with pytest.raises(ValueError, match=match):
        GeoEncoder()(torch.tensor(coords))
