"""Stage-1 STEncoder pretraining (stllm.train.pretrain_encoder) on a small synthetic city."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from stllm.data import RegionSplit, SplitRecord, STScaler, synthetic_city
from stllm.encoders import load_encoder
from stllm.train.pretrain_encoder import build_parser, main, pretrain_st_encoder

SMALL = dict(residual_channels=16, conv_channels=16, skip_channels=32, end_channels=64, token_dim=16, dropout=0.1)
TRAIN_STEPS = 280  # of 336 hourly steps: the rest is never read


@pytest.fixture(scope="module")
def city():
    return synthetic_city(0, n_regions=12, days=14, freq="1h")


@pytest.fixture(scope="module")
def split(city):
    return RegionSplit.random(city, test=0.25, seed=0)


@pytest.fixture(scope="module")
def run(city, split, tmp_path_factory):
    out = tmp_path_factory.mktemp("st_encoder")
    result = pretrain_st_encoder(
        city, split.train, slice(0, TRAIN_STEPS), val_fraction=0.25, encoder_config=SMALL, epochs=100,
        max_steps=150, batch_size=32, lr=3e-3, patience=100, seed=0, output_dir=out, progress=False,
    )  # fmt: skip
    return result, out


def test_encoder_beats_last_value_on_validation_slice(run, city, split):
    result, out = run
    val = json.loads((out / "metrics.json").read_text())["val"]
    for ch in city.channels:
        assert val["mae"][ch] < 0.75 * val["last_value_mae"][ch], (ch, val)
    # the baseline really is last-value MAE in original units on the validation slice: recompute it
    v0, v1 = json.loads((out / "split.json").read_text())["val_steps"]
    raw = city.values[:, city.region_index(split.train)].astype(np.float64)
    starts = np.arange(v0 - 12, v1 - 24 + 1)
    y = np.stack([raw[s + 12 : s + 24] for s in starts])
    last = np.stack([raw[s + 11 : s + 12] for s in starts])
    expected = np.abs(last - y).mean(axis=(0, 1, 2))
    np.testing.assert_allclose([val["last_value_mae"][ch] for ch in city.channels], expected, rtol=1e-6)
    assert val["windows"] == len(starts) and val["regions"] == len(split.train)
    # the kept weights are the best epoch's
    assert result.metrics["val"]["mae_mean"] == pytest.approx(min(h["val_mae"] for h in result.history))
    assert set(result.metrics["train"]["mae"]) == set(city.channels)


def test_saved_directory_reloads_to_identical_forecasts(run, city, split):
    result, out = run
    for name in ("encoder_config.json", "model.safetensors", "scaler.json", "split.json", "metrics.json",
                 "recon_decoder.safetensors"):
        assert (out / name).is_file(), name
    assert not any("decoder" in k for k in load_file(str(out / "model.safetensors")))
    enc = load_encoder(out).eval()
    x = torch.from_numpy(result.scaler.transform(city.values[100:112][None]))  # all 12 regions, (1, 12, N, C)
    with torch.no_grad():
        a, b = enc(x), result.encoder.eval()(x)
    assert torch.equal(a.forecast, b.forecast) and torch.equal(a.tokens, b.tokens)
    assert STScaler.load(out / "scaler.json") == result.scaler
    record = SplitRecord.from_json((out / "split.json").read_text())
    assert record.regions == split.train and not set(record.regions) & set(split.test)
    assert record.city == city.name
    assert record.time_range == (str(city.timestamps[0]), str(city.timestamps[TRAIN_STEPS - 1] + city.freq))


def _quick(city, split, **kw):
    kw = {"encoder_config": SMALL, "epochs": 1, "max_steps": 3, "batch_size": 8, "seed": 1, "progress": False, **kw}
    return pretrain_st_encoder(city, split.train, slice(0, TRAIN_STEPS), **kw)


def test_only_training_regions_and_times_are_read(city, split):
    """Held-out regions and steps after the training range can change freely: same scaler, same weights."""
    held = city.region_index(split.test)
    values = city.values.copy()
    values[:, held] = values[:, held] * 10 + 7
    values[TRAIN_STEPS:] += 100
    changed = replace(city, values=values)
    a, b = _quick(city, split), _quick(changed, split)
    assert a.scaler == b.scaler
    assert all(torch.equal(v, b.encoder.state_dict()[k]) for k, v in a.encoder.state_dict().items())
    assert a.metrics["val"] == b.metrics["val"]
    # control: a change inside the training regions and time does move the scaler
    values = city.values.copy()
    values[:10, city.region_index(split.train[:1])] += 50
    assert _quick(replace(city, values=values), split).scaler != a.scaler


def test_validation_regions_are_never_fitted_but_choose_the_weights(city, split):
    """With val_region_fraction the validation regions are not fitted (the scaler ignores them) but they are
    what the validation MAE is measured on; the split still lists them as seen, so a zero-shot evaluation
    refuses them."""
    a = _quick(city, split, val_region_fraction=0.25)
    held = a.metrics["settings"]["val_regions"]
    assert len(held) == round(0.25 * len(split.train)) and set(held) < set(split.train)
    assert a.metrics["val"]["regions"] == len(held) and a.metrics["train"]["regions"] == len(split.train) - len(held)
    assert set(a.split.regions) == set(split.train)
    values = city.values.copy()
    values[:, city.region_index(held)] = values[:, city.region_index(held)] * 3 + 5
    b = _quick(replace(city, values=values), split, val_region_fraction=0.25)
    assert b.scaler == a.scaler
    assert b.metrics["val"]["mae_mean"] > 2 * a.metrics["val"]["mae_mean"]  # measured on the (tripled) held regions
    with pytest.raises(ValueError, match="val_region_fraction"):
        _quick(city, split, val_region_fraction=0.99)


def test_missing_values_and_bad_input(city, split, tmp_path):
    mask = np.ones(city.values.shape, dtype=bool)
    mask[150:200, :, 0] = False
    r = _quick(replace(city, mask=mask), split)
    assert np.isfinite(r.metrics["val"]["mae_mean"])
    with pytest.raises(ValueError, match="channels"):
        _quick(city, split, encoder_config={**SMALL, "in_channels": 3, "out_channels": 3})
    with pytest.raises(ValueError, match="unknown region ids"):
        pretrain_st_encoder(city, ["nope"], slice(0, TRAIN_STEPS), encoder_config=SMALL, max_steps=1, progress=False)
    (tmp_path / "enc" / "encoder_config.json").parent.mkdir()
    (tmp_path / "enc" / "encoder_config.json").write_text(json.dumps({"kind": "st"}))
    with pytest.raises(FileExistsError, match="overwrite"):
        _quick(city, split, output_dir=tmp_path / "enc")
    (tmp_path / "ev").mkdir()
    (tmp_path / "ev" / "metrics.json").write_text("{}")  # an evaluation: never replaced by an encoder
    with pytest.raises(FileExistsError, match="holds a evaluation, not a st encoder"):
        _quick(city, split, output_dir=tmp_path / "ev", overwrite=True)


def test_cli_end_to_end(tmp_path, capsys):
    cfg = tmp_path / "enc.json"
    cfg.write_text(json.dumps(SMALL))
    out = tmp_path / "enc"
    argv = ["--synthetic_regions", "8", "--synthetic_days", "4", "--epochs", "2", "--max_steps", "4",
            "--context_days", "1", "--context_weeks", "0",
            "--batch_size", "8", "--encoder_config", str(cfg), "--output_dir", str(out), "--no_progress",
            "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "last value" in printed and str(out) in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["channels"] == ["inflow", "outflow"]
    split = json.loads((out / "split.json").read_text())
    assert len(split["regions"]) == 8 - round(0.2 * 8)  # --test_regions 0.2 held out
    assert load_encoder(out).config.residual_channels == 16
    assert main(argv) == 2 and "overwrite" in capsys.readouterr().err  # refuses to clobber a run
    assert main([*argv, "--overwrite_output_dir"]) == 0


def test_help_shows_every_default():
    parser = build_parser()
    text = parser.format_help()
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert text.count("(default:") == len(options)
    for flag in ("--data", "--mode", "--output_dir", "--epochs", "--seed", "--patience", "--lr"):
        assert flag in text


CLI_SMALL = ["--synthetic_regions", "8", "--synthetic_days", "4", "--epochs", "1", "--max_steps", "2",
             "--context_days", "1", "--context_weeks", "0", "--batch_size", "8", "--no_progress", "--device", "cpu"]


@pytest.mark.parametrize("flag,value,named", [
    ("--steps_per_epoch", "-3", "--steps_per_epoch"),  # "--steps -3" guessed this flag: now refused (test_cli)
    ("--steps_per_epoch", "0", "--steps_per_epoch"),
    ("--epochs", "0", "--epochs"), ("--epochs", "-1", "--epochs"), ("--max_steps", "0", "--max_steps"),
    ("--test_regions", "-0.5", "--test_regions"), ("--test_regions", "1", "--test_regions"),
    ("--train_frac", "0", "--train_frac"), ("--val_frac", "1", "--val_frac"), ("--val_frac", "0", "--val_frac"),
    ("--batch_size", "0", "--batch_size"), ("--mask_ratio", "1", "--mask_ratio"), ("--patience", "0", "--patience"),
    ("--input_window", "0", "--input_window"), ("--horizon", "-12", "--horizon"),
    ("--context_days", "-1", "--context_days"), ("--lr", "-1e-3", "--lr"),
    ("--regions_per_batch", "0", "--regions_per_batch"),
    ("--synthetic_regions", "0", "--synthetic_regions"), ("--val_stride", "0", "--val_stride"),
])  # fmt: skip
def test_out_of_range_flags_are_refused_naming_the_flag(tmp_path, capsys, flag, value, named):
    with pytest.raises(SystemExit) as e:
        main([*CLI_SMALL, "--output_dir", str(tmp_path / "enc"), f"{flag}={value}"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {named}" in err and value in err and not (tmp_path / "enc").exists()


@pytest.mark.parametrize("test", ["0.01", "0.95"])  # rounds to 0 of 8 regions held out / to all 8
def test_a_held_out_fraction_that_leaves_a_side_empty_is_refused(tmp_path, capsys, test):
    assert main([*CLI_SMALL, "--output_dir", str(tmp_path / "enc"), "--test_regions", test]) == 2
    err = capsys.readouterr().err
    assert f"--test_regions {test} holds out" in err and "of the 8 regions" in err
    assert main([*CLI_SMALL, "--output_dir", str(tmp_path / "all"), "--test_regions", "0"]) == 0  # 0: hold out none
    assert len(json.loads((tmp_path / "all" / "split.json").read_text())["regions"]) == 8


def test_never_writes_over_another_artefact_or_a_directory_being_written(tmp_path, capsys):
    import os

    from stllm import GeoEncoder, GeoEncoderConfig, save_encoder
    from stllm.outdir import claim_output_dir

    save_encoder(GeoEncoder(GeoEncoderConfig()), tmp_path / "geo")
    assert main([*CLI_SMALL, "--output_dir", str(tmp_path / "geo"), "--overwrite_output_dir"]) == 2
    assert "holds a geo encoder, not a st encoder" in capsys.readouterr().err
    assert json.loads((tmp_path / "geo" / "encoder_config.json").read_text())["kind"] == "geo"
    with claim_output_dir(tmp_path / "enc", "st encoder"):  # a live stage-1 job holds the directory
        assert main([*CLI_SMALL, "--output_dir", str(tmp_path / "enc")]) == 2
    assert f"pid {os.getpid()}" in capsys.readouterr().err and not (tmp_path / "enc" / "model.safetensors").exists()


def test_level_start_learns_how_a_busy_day_scales_the_anchor():
    """A city whose every day is scaled by its own random factor: the last hours say how busy today is, the
    historical average cannot. The level exponents fitted at the start are positive and the level encoder,
    before any SGD step, beats the same encoder without the level block on validation."""
    base = synthetic_city(0, n_regions=8, days=35, freq="1h")
    factor = np.exp(np.random.default_rng(0).normal(0.0, 0.4, size=35)).repeat(24)
    city = replace(base, values=np.round(base.values * factor[:, None, None]).astype(base.values.dtype))
    context = {**SMALL, "days": 1, "weeks": 2}
    kw = dict(val_fraction=0.25, epochs=1, max_steps=0, seed=0, progress=False)
    plain = pretrain_st_encoder(city, city.region_ids, None, encoder_config=context, **kw)
    level = pretrain_st_encoder(city, city.region_ids, None, encoder_config={**context, "level_len": 24}, **kw)
    assert level.metrics["level_start_windows"] > 0 and plain.metrics["level_weights"] is None
    assert max(level.metrics["level_weights"][0] + level.metrics["level_weights"][1]) > 0.2
    assert level.metrics["val"]["mae_mean"] < 0.95 * plain.metrics["val"]["mae_mean"]
    assert level.encoder.config.level_zero == tuple(-m / s for m, s in zip(level.scaler.mean, level.scaler.std))


def test_event_logit_path_is_the_logistic_baseline_fitted_at_stage_1():
    """Hourly Poisson events, rate 0.1 or 2.0 per region: the encoder's event path, fitted before any SGD step
    on the training part only, scores held-out regions as the scale-free logistic baseline does on the same
    problem (same solver; a feature-layout slip would break the match), near 1 - exp(-rate) (0.095 / 0.865)."""
    from stllm.data import CityData, Region
    from stllm.data.context import ContextSpec
    from stllm.eval.baselines import _check_past
    from stllm.eval.logistic import scale_free_logistic
    from stllm.eval.ridge import scaled_contexts

    rng = np.random.default_rng(0)
    lam = np.tile([0.1, 2.0], 4)
    values = rng.poisson(lam[None, :, None], (6 * 168, 8, 1)).astype(np.float32)
    ts = np.datetime64("2024-01-01", "m") + np.arange(len(values)) * np.timedelta64(1, "h")
    city = CityData(values, ts, "1h", ("ev",), tuple(Region(str(i), f"r{i}") for i in range(8)), task="event",
                    source="test")  # fmt: skip
    context = {**SMALL, "in_channels": 1, "out_channels": 1, "num_tokens": 1, "days": 1, "weeks": 2}
    train_time = slice(0, 5 * 168)
    kw = dict(val_fraction=0.2, epochs=1, max_steps=0, seed=0, progress=False)
    res = pretrain_st_encoder(city, ["0", "1", "2", "3"], train_time, encoder_config={**context, "event_logits": True},
                              **kw)  # fmt: skip
    plain = pretrain_st_encoder(city, ["0", "1", "2", "3"], train_time, encoder_config=context, **kw)
    assert res.metrics["event_logit_rows"] > 1000 and plain.metrics["event_logit_rows"] == 0
    assert plain.encoder.event_proj is None
    enc, scaler = res.encoder.eval(), res.scaler
    starts = np.arange(5 * 168 - 12, 6 * 168 - 24, 6)
    t0, reg = np.repeat(starts + 12, 4), np.tile(np.arange(4, 8), len(starts))
    x = scaled_contexts(city, scaler, ContextSpec(12, 12, 1, 2), t0, reg, "test", _check_past)  # (B, L, 1, 1)
    with torch.no_grad():
        p = torch.sigmoid(enc(torch.from_numpy(x)).event_logits).numpy().reshape(len(starts), 4, 12, 1)
    assert abs(p[:, [0, 2]].mean() - 0.095) < 0.05 and abs(p[:, [1, 3]].mean() - 0.865) < 0.05
    v0 = 5 * 168 - round(0.2 * 5 * 168)
    base = scale_free_logistic(city, starts, [4, 5, 6, 7], 12, 12, ["0", "1", "2", "3"], slice(0, v0),
                               scaler=scaler, days=1, weeks=2)  # fmt: skip
    assert np.abs(p - base).mean() < 0.02, np.abs(p - base).mean()
