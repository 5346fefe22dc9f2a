"""Stage-1 objectives and the window sampler (stllm.encoders.pretrain)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stllm.encoders import STEncoder, STEncoderConfig
from stllm.encoders.pretrain import (
    STPretrainObjective,
    WindowSampler,
    gather_windows,
    mask_time_steps,
    masked_mae,
)

SMALL = dict(residual_channels=8, conv_channels=8, skip_channels=16, end_channels=16, token_dim=8, dropout=0.0)


def small_encoder(**kw) -> STEncoder:
    torch.manual_seed(0)
    return STEncoder(STEncoderConfig(**{**SMALL, **kw}))


def test_masked_mae_ignores_masked_positions():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 4, 5, 2, generator=g, requires_grad=True)
    target = torch.randn(3, 4, 5, 2, generator=g)
    mask = torch.rand(3, 4, 5, 2, generator=g) > 0.4
    loss = masked_mae(pred, target, mask)
    expected = (pred - target).abs()[mask].mean()
    torch.testing.assert_close(loss, expected)
    # garbage at masked-out positions changes nothing, and gets no gradient
    wild = torch.where(mask, target, torch.full_like(target, 1e6))
    torch.testing.assert_close(masked_mae(pred, wild, mask), loss)
    loss.backward()
    assert torch.all(pred.grad[~mask] == 0) and torch.all(pred.grad[mask] != 0)
    # a broadcast mask (one flag per step for all channels) and an all-False mask
    step_mask = mask[..., :1]
    expected = (pred - target).abs()[step_mask.expand_as(pred)].mean()
    torch.testing.assert_close(masked_mae(pred, target, step_mask), expected)
    assert masked_mae(pred, target, torch.zeros_like(mask)).item() == 0.0


def test_mask_time_steps_zeroes_exactly_the_chosen_steps():
    x = torch.rand(4, 12, 6, 2) + 1.0  # no zeros anywhere before masking
    xm, hidden = mask_time_steps(x, 0.25, torch.Generator().manual_seed(1))
    assert hidden.shape == (4, 12, 6) and hidden.dtype == torch.bool
    assert torch.all(hidden.sum(dim=1) == 3)  # round(0.25 * 12) steps per (window, region)
    assert torch.all(xm[hidden] == 0)  # every channel of a hidden step is zero
    assert torch.equal(xm[~hidden], x[~hidden])  # everything else untouched
    assert len({tuple(hidden[w, :, n].nonzero().flatten().tolist()) for w in range(4) for n in range(6)}) > 1
    xm2, hidden2 = mask_time_steps(x, 0.25, torch.Generator().manual_seed(1))
    assert torch.equal(hidden, hidden2) and torch.equal(xm, xm2)
    with pytest.raises(ValueError, match="mask ratio"):
        mask_time_steps(x, 1.0)


def test_objective_masks_targets_and_trains_both_terms():
    enc = small_encoder()
    obj = STPretrainObjective(enc, mask_ratio=0.25, recon_weight=0.5)
    g = torch.Generator().manual_seed(0)
    t = torch.arange(24, dtype=torch.float32)
    series = torch.sin(t[None, :, None, None] * 0.5 + torch.rand(16, 1, 5, 2, generator=g) * 6)
    x, y = series[:, :12], series[:, 12:]
    y_obs = torch.rand(y.shape, generator=g) > 0.3
    obj.eval()  # no dropout: losses depend only on the inputs and the masking generator
    base = obj(x, y, y_obs, generator=torch.Generator().manual_seed(5))
    wild = obj(x, torch.where(y_obs, y, torch.full_like(y, 1e4)), y_obs, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(wild.forecast_loss, base.forecast_loss)
    assert obj(x, y, y_obs, x_observed=torch.zeros_like(x, dtype=torch.bool)).recon_loss.item() == 0.0
    # the decoder is auxiliary: never part of the encoder's weights
    assert not any("decoder" in k for k in enc.state_dict())
    # a few steps lower both loss terms
    obj.train()
    opt = torch.optim.Adam(obj.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    first = None
    for _ in range(40):
        out = obj(x, y, y_obs, generator=gen)
        first = first or (out.forecast_loss.item(), out.recon_loss.item())
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert out.forecast_loss.item() < 0.7 * first[0] and out.recon_loss.item() < 0.9 * first[1]


def test_decoder_saved_separately(tmp_path):
    obj = STPretrainObjective(small_encoder())
    path = obj.save_decoder(tmp_path)
    other = STPretrainObjective(small_encoder())
    torch.nn.init.zeros_(other.decoder.proj.weight)
    other.load_decoder(tmp_path)
    assert path.name == "recon_decoder.safetensors"
    assert torch.equal(other.decoder.proj.weight, obj.decoder.proj.weight)


def test_gather_windows_matches_slices():
    rng = np.random.default_rng(0)
    values = rng.random((50, 7, 2)).astype(np.float32)
    mask = rng.random((50, 7, 2)) > 0.2
    starts = np.array([0, 5, 26])
    regions = np.array([[0, 3], [6, 1], [2, 2]])
    b = gather_windows(values, starts, regions, 12, 12, mask)
    assert b.x.shape == (3, 12, 2, 2) and b.y.shape == (3, 12, 2, 2) and b.x.dtype == torch.float32
    for i, (s, r) in enumerate(zip(starts, regions)):
        np.testing.assert_array_equal(b.x[i].numpy(), values[s : s + 12][:, r])
        np.testing.assert_array_equal(b.y[i].numpy(), values[s + 12 : s + 24][:, r])
        np.testing.assert_array_equal(b.y_observed[i].numpy(), mask[s + 12 : s + 24][:, r])
    shared = gather_windows(values, starts, np.array([4, 0]), 12, 12)
    np.testing.assert_array_equal(shared.x[2].numpy(), values[26:38][:, [4, 0]])
    assert shared.x_observed is None


def test_window_sampler_stays_inside_its_regions_and_time():
    values = np.arange(100 * 9 * 2, dtype=np.float32).reshape(100, 9, 2)
    allowed = np.array([1, 4, 5, 8])
    s = WindowSampler(values, 6, 4, batch_size=16, time_start=10, time_stop=70, regions=allowed,
                      regions_per_batch=3, seed=0)
    assert s.n_windows == 70 - 10 - 10 + 1 and len(s) == 4
    seen = []
    for b in s:
        assert b.x.shape[1:] == (6, 3, 2) and b.regions.shape == (len(b.starts), 3)
        assert np.isin(b.regions, allowed).all()
        assert all(len(set(r)) == 3 for r in b.regions.tolist())  # no region twice in one window
        t_idx = b.y[..., 0].numpy() // (9 * 2)  # the values encode their time step
        assert t_idx.min() >= 10 and t_idx.max() < 70
        seen.extend(b.starts.tolist())
    assert sorted(seen) == list(range(10, 61))  # one epoch = every start once
    shared = WindowSampler(values, 6, 4, 8, regions=allowed, regions_per_batch=2, shared_regions=True, seed=0)
    b = shared.sample()
    assert b.regions.shape == (2,) and b.x.shape == (8, 6, 2, 2)
    a1 = WindowSampler(values, 6, 4, 8, regions_per_batch=3, seed=3).sample()
    a2 = WindowSampler(values, 6, 4, 8, regions_per_batch=3, seed=3).sample()
    assert torch.equal(a1.x, a2.x) and np.array_equal(a1.regions, a2.regions)
    with pytest.raises(ValueError, match="fewer than one window"):
        WindowSampler(values, 6, 4, 8, time_start=0, time_stop=9)
