import pytest
import torch

from stllm import STEncoder, STEncoderConfig


def _n_params(module) -> int:
    return sum(p.numel() for p in module.parameters())


TINY = dict(in_channels=2, out_channels=2, input_window=12, horizon=4, layers=2, residual_channels=8, conv_channels=8,
            skip_channels=16, end_channels=16, kernel_set=(2, 3), num_tokens=2, token_dim=8, days=1, weeks=1,
            recent_views=False)  # the layout the count below was worked for


def test_parameter_count_matches_the_architecture_worked_by_hand():
    """Counted by hand from the MTGNN/UrbanGPT layout (Conv2d(i, o, (1, k)) has i*o*k + o parameters):
    C=2 in/out, 12 recent steps, horizon 4, 2 layers, residual = conv = 8 channels, skip 16, end 16,
    kernels (2, 3), 2 tokens of 8, one day and one week view. Receptive field 2*(3-1)+1 = 5, so the
    layer outputs are 3 and 1 steps long; the context is (1+1)*4 + 12 = 20 steps."""
    start_conv = 2 * 8 + 8  # C -> residual, 1x1
    skip0 = 2 * 16 * 5 + 16  # C -> skip over the receptive field
    inception = (8 * 4 * 2 + 4) + (8 * 4 * 3 + 4)  # residual -> conv/2 per kernel width
    per_layer = 2 * inception + (8 * 8 + 8)  # filter + gate + residual 1x1
    skip_convs = (8 * 16 * 3 + 16) + (8 * 16 * 1 + 16)
    skip_end = 8 * 16 + 16
    period_proj = (2 + 1) * 4 * 2 * 16 + 16  # two views + anchor, horizon x C values each -> skip
    stats_proj = 2 * 2 * 16 + 16  # level and spread per channel -> skip
    linear_proj = 20 * 2 * (4 * 2) + 4 * 2  # whole context -> horizon x C correction
    token_conv, end_1, end_2 = 16 * 16 + 16, 16 * 16 + 16, 16 * 8 + 8
    by_hand = (start_conv + skip0 + 2 * per_layer + skip_convs + skip_end + period_proj + stats_proj + linear_proj
               + token_conv + end_1 + end_2)  # fmt: skip
    assert by_hand == 3192
    assert _n_params(STEncoder(STEncoderConfig(**TINY))) == by_hand
    # graph mixing adds one MixProp 1x1 conv per layer over (depth + 1) stacked propagations: 2 * (3*8*8 + 8)
    assert _n_params(STEncoder(STEncoderConfig(**TINY, graph_mixing=True, gcn_depth=2))) == by_hand + 2 * 200
    # without normalisation there are no statistics features and no linear path
    assert _n_params(STEncoder(STEncoderConfig(**TINY, normalize=False))) == by_hand - stats_proj - linear_proj
    # views that also hold the 12 recent slots: 16-step views, a (2*16 + 12)-step context
    wider = (2 + 1) * 16 * 2 * 16 + (2 * 16 + 12) * 2 * (4 * 2) - (2 + 1) * 4 * 2 * 16 - 20 * 2 * (4 * 2)
    assert _n_params(STEncoder(STEncoderConfig(**{**TINY, "recent_views": True}))) == by_hand + wider


def test_shapes_follow_config():
    cfg = STEncoderConfig(in_channels=3, out_channels=4, horizon=6, num_tokens=3, token_dim=16, normalize=False)
    out = STEncoder(cfg).eval()(torch.randn(5, 12, 7, 3))
    assert out.tokens.shape == (5, 7, 3, 16)
    assert out.forecast.shape == (5, 7, 6, 4)


def test_left_padding_reaches_the_whole_window():
    """Input shorter than the receptive field is left-padded, and every step still matters."""
    enc = STEncoder().eval()
    assert enc.config.receptive_field > enc.config.input_window
    x = torch.randn(1, 12, 4, 2)
    base = enc(x).tokens
    for t in (0, 11):
        y = x.clone()
        y[0, t] += 1.0
        assert not torch.allclose(enc(y).tokens, base)


def test_regions_do_not_leak_without_graph_mixing():
    enc = STEncoder().eval()
    x = torch.randn(2, 12, 5, 2)
    y = x.clone()
    y[:, :, 2] += 3.0
    a, b = enc(x), enc(y)
    others = [0, 1, 3, 4]
    assert torch.equal(a.tokens[:, others], b.tokens[:, others])
    assert torch.equal(a.forecast[:, others], b.forecast[:, others])
    assert not torch.allclose(a.tokens[:, 2], b.tokens[:, 2])


def test_graph_mixing_propagates_along_edges_only():
    enc = STEncoder(STEncoderConfig(graph_mixing=True)).eval()
    adj = torch.zeros(4, 4)
    adj[0, 1] = adj[1, 0] = 1.0  # regions 2 and 3 are isolated
    x = torch.randn(1, 12, 4, 2)
    y = x.clone()
    y[:, :, 0] = torch.randn(1, 12, 2)  # a new shape (a shift or scale alone is normalised away)
    a, b = enc(x, adj).tokens, enc(y, adj).tokens
    assert not torch.allclose(a[:, 1], b[:, 1])  # neighbour sees it
    assert torch.equal(a[:, 2:], b[:, 2:])  # isolated regions do not
    with pytest.raises(ValueError, match="st_adj"):
        enc(x)


@pytest.mark.parametrize(
    "shape,match", [((2, 12, 3), "W, T, N, C"), ((1, 12, 3, 5), "channels"), ((1, 10, 3, 2), "input_window")]
)
def test_bad_input_shapes(shape, match):
    with pytest.raises(ValueError, match=match):
        STEncoder()(torch.randn(*shape))


def test_config_rejects_indivisible_channels():
    with pytest.raises(ValueError, match="divisible"):
        STEncoderConfig(conv_channels=30)


def test_untrained_context_encoder_forecasts_the_historical_average():
    """Residual forecast: the correction starts at zero, so the forecast is the mean of the week views."""
    import numpy as np

    from stllm.data import synthetic_city
    from stllm.data.context import ContextSpec, gather_context
    from stllm.eval.baselines import historical_average

    city = synthetic_city(n_regions=4, days=40, freq="1h")
    cfg = STEncoderConfig(days=3, weeks=4)
    enc = STEncoder(cfg).eval()
    t0 = np.array([5 * 168 + 7, 5 * 168 + 30])
    x = gather_context(city.values, ContextSpec(12, 12, 3, 4), city.freq, t0)
    with torch.no_grad():
        out = enc(torch.from_numpy(x))
    ha = historical_average(city, t0 - 12, np.arange(4), 12, 12, weeks=4)
    np.testing.assert_allclose(out.forecast.numpy(), ha, rtol=1e-4, atol=1e-3)
    torch.nn.init.normal_(enc.end_conv_2.weight)  # once trained, it is anchor + a learned correction
    assert not np.allclose(enc(torch.from_numpy(x)).forecast.detach().numpy(), ha, atol=1e-2)


def test_normalisation_makes_the_encoder_scale_free():
    """Each series is normalised by its own history: scaling and shifting a region's inputs scales and
    shifts its forecast, tokens unchanged (the statistics enter as features only through stats_proj)."""
    enc = STEncoder(STEncoderConfig(days=1, weeks=1, norm_eps=1e-6)).eval()  # eps: the only scale
    torch.nn.init.normal_(enc.end_conv_2.weight, std=0.1)
    with torch.no_grad():
        enc.stats_proj.weight.zero_()
        enc.stats_proj.bias.zero_()
        x = torch.rand(2, enc.config.context_length, 3, 2) * 5
        a, b = enc(x), enc(x * 7.0 + 3.0)
    torch.testing.assert_close(b.forecast, a.forecast * 7.0 + 3.0, rtol=1e-3, atol=1e-2)
    torch.testing.assert_close(b.tokens, a.tokens, rtol=1e-3, atol=1e-3)


def test_wrong_context_length_is_named():
    enc = STEncoder(STEncoderConfig(days=7, weeks=8))
    with pytest.raises(ValueError, match=r"context of 192 steps \(days=7, weeks=8"):
        enc(torch.randn(1, 12, 2, 2))


def test_recent_views_widen_every_view_and_survive_a_save():
    """An encoder saved without the field (all before it) read target-only views; one saved with it keeps
    its 24-step views when loaded."""
    saved = STEncoderConfig(days=7, weeks=8).to_dict()
    del saved["recent_views"]
    assert STEncoderConfig.from_dict(saved).context_length == 15 * 12 + 12
    wide = STEncoderConfig(days=7, weeks=8, recent_views=True)
    assert STEncoderConfig.from_dict(wide.to_dict()).context_length == 15 * 24 + 12 == wide.context_length

