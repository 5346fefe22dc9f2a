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



def _level_config(**kw) -> STEncoderConfig:
    # a scaler with mean 10 and std 2: a count c reads (c - 10) / 2, so zero is -5 and one count 0.5
    return STEncoderConfig(**{**dict(days=1, weeks=2, input_window=2, horizon=3, level_len=4, level_zero=(-5.0,),
                                     level_unit=(0.5,), in_channels=1, out_channels=1, num_tokens=1), **kw})


def test_level_ratios_compare_counts_with_the_same_steps_in_earlier_weeks():
    """Worked by hand: last 4 steps 4, 4, 8, 8 counts; both earlier weeks 2, 2, 4, 4; 0.25 counts per step
    smooth each side. Recent (last 2 steps): (16 + .5) / (8 + .5); all 4: (24 + 1) / (12 + 1); oldest 3 (the
    horizon): (16 + .75) / (8 + .75)."""
    from stllm.encoders.level import level_log_ratios

    counts = torch.tensor([2, 2, 4, 4, 2, 2, 4, 4, 4, 4, 8, 8], dtype=torch.float32)
    block = ((counts - 10) / 2).reshape(1, 12, 1, 1)
    got = level_log_ratios(block, _level_config())
    assert got.shape == (1, 1, 3, 1)
    want = torch.tensor([16.5 / 8.5, 25 / 13, 16.75 / 8.75]).log()
    torch.testing.assert_close(got[0, 0, :, 0], want)


def test_level_anchor_scales_the_historical_average_in_counts():
    """Untrained (exponents 0): the plain historical average. With exponent 1 on the recent ratio: the
    historical average in counts times (last 12 counts + 3) / (their mean over the 4 earlier weeks + 3),
    computed here from the city's counts directly."""
    import numpy as np

    from stllm.data import STScaler, synthetic_city
    from stllm.data.context import ContextSpec, gather_context
    from stllm.encoders.level import level_from_scaler
    from stllm.eval.baselines import historical_average

    city = synthetic_city(n_regions=3, days=40, freq="1h")
    scaler = STScaler.fit(city)
    cfg = STEncoderConfig(days=2, weeks=4, level_len=24, **level_from_scaler(scaler))
    enc = STEncoder(cfg).eval()
    t0 = np.array([5 * 168 + 7, 5 * 168 + 30])
    x = scaler.transform(gather_context(city.values, ContextSpec.of_encoder(cfg), city.freq, t0)).astype(np.float32)
    ha = historical_average(city, t0 - 12, np.arange(3), 12, 12, weeks=4)  # (B, N, H, C)
    with torch.no_grad():
        plain = scaler.inverse(enc(torch.from_numpy(x)).forecast.double().numpy())
        np.testing.assert_allclose(plain, ha, rtol=1e-4, atol=1e-3)
        enc.level_weights.zero_()
        enc.level_weights[0] = 1.0
        scaled = scaler.inverse(enc(torch.from_numpy(x)).forecast.double().numpy())
    v = city.values.astype(np.float64)
    now = np.stack([v[t - 12 : t].sum(0) for t in t0])  # (B, N, C)
    usual = np.stack([np.mean([v[t - 12 - k * 168 : t - k * 168].sum(0) for k in range(1, 5)], axis=0) for t in t0])
    np.testing.assert_allclose(scaled, ha * ((now + 3) / (usual + 3))[:, :, None], rtol=1e-4, atol=1e-3)


def test_an_encoder_reads_another_citys_level_through_that_citys_scaler():
    """Cross-city: a new city's inputs are scaled with its own scaler. Read through the training scaler
    they give affine-distorted counts (wrong ratios); after ``match_scaler`` the exponent-1 anchor is the
    new city's historical average times its own count ratio, computed from its counts directly."""
    import dataclasses

    import numpy as np

    from stllm.data import STScaler, synthetic_city
    from stllm.data.context import ContextSpec, gather_context
    from stllm.encoders.level import level_from_scaler
    from stllm.eval.baselines import historical_average

    train_city = synthetic_city(seed=1, n_regions=3, days=40, freq="1h")
    city = synthetic_city(seed=2, n_regions=3, days=40, freq="1h")
    city = dataclasses.replace(city, values=(city.values * 3 + 40).astype(city.values.dtype))  # other mean / std
    own = STScaler.fit(city)
    enc = STEncoder(STEncoderConfig(days=2, weeks=4, level_len=24, **level_from_scaler(STScaler.fit(train_city))))
    enc.eval()
    with torch.no_grad():
        enc.level_weights[0] = 1.0
    t0 = np.array([5 * 168 + 7, 5 * 168 + 30])
    x = torch.from_numpy(own.transform(gather_context(city.values, ContextSpec.of_encoder(enc.config), city.freq,
                                                      t0)).astype(np.float32))
    v = city.values.astype(np.float64)
    now = np.stack([v[t - 12 : t].sum(0) for t in t0])
    usual = np.stack([np.mean([v[t - 12 - k * 168 : t - k * 168].sum(0) for k in range(1, 5)], axis=0) for t in t0])
    want = historical_average(city, t0 - 12, np.arange(3), 12, 12, weeks=4) * ((now + 3) / (usual + 3))[:, :, None]
    with torch.no_grad():
        stale = own.inverse(enc(x).forecast.double().numpy())
        enc.match_scaler(own)
        matched = own.inverse(enc(x).forecast.double().numpy())
    assert np.abs(stale - want).max() > 1.0  # the bug this guards against
    np.testing.assert_allclose(matched, want, rtol=1e-4, atol=1e-3)


def test_level_block_needs_weeks_and_the_count_conversion():
    with pytest.raises(ValueError, match="needs weeks >= 1"):
        _level_config(weeks=0)
    assert STEncoder(_level_config(residual=False)).level_weights is None  # the ablations: ratios as an input only
    with pytest.raises(ValueError, match="level_zero and level_unit with one value per input channel"):
        STEncoder(_level_config(level_zero=(), level_unit=()))
    saved = _level_config().to_dict()
    assert STEncoderConfig.from_dict(saved).context_length == 3 * 4 + 3 * 3 + 2  # level block, 3 views, recent
    for key in ("level_len", "level_zero", "level_unit", "level_smoothing"):  # saved before the level block
        del saved[key]
    assert STEncoderConfig.from_dict(saved).context_length == 3 * 3 + 2


def test_level_scaled_correction_shrinks_with_the_level_gain():
    """``level_scales_correction``: the same weights, the learned correction multiplied by the level gain at inference
    (exponent 1 on the recent ratio: how busy the last 12 steps were against the same steps in 4 earlier weeks,
    counted here from the city directly), so a quiet day gets a proportionally smaller correction."""
    import dataclasses

    import numpy as np

    from stllm.data import STScaler, synthetic_city
    from stllm.data.context import ContextSpec, gather_context
    from stllm.encoders.level import level_from_scaler

    city = synthetic_city(n_regions=3, days=40, freq="1h")
    scaler = STScaler.fit(city)
    cfg = STEncoderConfig(days=2, weeks=4, level_len=24, **level_from_scaler(scaler))
    off = STEncoder(cfg).eval()
    on = STEncoder(dataclasses.replace(cfg, level_scales_correction=True)).eval()
    with torch.no_grad():
        torch.nn.init.normal_(off.end_conv_2.weight, std=0.05)  # a nonzero correction
        off.level_weights.zero_()
        off.level_weights[0] = 1.0
    on.load_state_dict(off.state_dict())
    t0 = np.array([5 * 168 + 7, 5 * 168 + 30])
    x = torch.from_numpy(scaler.transform(gather_context(city.values, ContextSpec.of_encoder(cfg), city.freq, t0))
                         .astype(np.float32))  # fmt: skip
    with torch.no_grad():
        a, b = off(x), on(x)
    v = city.values.astype(np.float64)
    now = np.stack([v[t - 12 : t].sum(0) for t in t0])  # (B, N, C)
    usual = np.stack([np.mean([v[t - 12 - k * 168 : t - k * 168].sum(0) for k in range(1, 5)], axis=0) for t in t0])
    gain = torch.from_numpy((now + 3) / (usual + 3)).float()[:, :, None]  # (B, N, 1, C)
    assert a.gain is None and (gain - 1).abs().max() > 0.05  # the windows are not all at their usual level
    torch.testing.assert_close(b.anchor, a.anchor)
    torch.testing.assert_close(b.base - b.anchor, (a.base - a.anchor) * gain, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b.gain, gain, rtol=1e-4, atol=1e-5)
    with torch.no_grad():  # while the correction is learned it is not scaled: training sees the training units
        c = on(x, scale_correction=False)
        d = STEncoder(dataclasses.replace(cfg, level_scales_correction=True, dropout=0.0)).train()
        d.load_state_dict(off.state_dict())
        d_train, d_eval = d(x), d.eval()(x)
    assert c.gain is None and d_train.gain is None
    torch.testing.assert_close(c.base, a.base)
    torch.testing.assert_close(d_train.base, a.base)
    torch.testing.assert_close(d_eval.base, b.base)
