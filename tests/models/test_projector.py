import pytest
import torch

from stllm import STProjector


def test_linear_and_mlp_kinds_map_width():
    x = torch.randn(5, 2, 16)
    lin, mlp = STProjector(16, 64), STProjector(16, 64, "mlp2x_gelu")
    assert lin(x).shape == mlp(x).shape == (5, 2, 64)
    assert sum(p.numel() for p in lin.parameters()) == 16 * 64 + 64
    assert sum(p.numel() for p in mlp.parameters()) == 16 * 64 + 64 + 64 * 64 + 64
    # the linear projector is affine: f(a) + f(b) - f(0) == f(a + b); the MLP is not
    a, b, z = torch.randn(16), torch.randn(16), torch.zeros(16)
    torch.testing.assert_close(lin(a) + lin(b) - lin(z), lin(a + b))
    assert not torch.allclose(mlp(a) + mlp(b) - mlp(z), mlp(a + b))


def test_unknown_kind():
    with pytest.raises(ValueError, match="unknown projector kind"):
        STProjector(16, 64, "mlp3x")
