"""stllm eval end to end on a tiny synthetic city: table, files, and the zero-shot checks."""

import json
import shutil

import numpy as np
import pytest
import torch
from model_fixtures import train_tiny_run

from stllm import STLlamaForCausalLM
from stllm.data import SplitError, synthetic_city
from stllm.eval.zero_shot import evaluate, main


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("ckpt"), "--synthetic_regions", "8", "--synthetic_days", "21",
                          "--context_days", "2", "--context_weeks", "1", "--max_steps", "10")


def test_cross_region_table_files_and_honesty(checkpoint, tmp_path, capsys):
    assert main([str(checkpoint), "--output_dir", str(tmp_path), "--no_progress", "--no_supervised"]) == 0
    printed = capsys.readouterr().out
    header, *rows = printed.split("\n\n")[0].splitlines()
    assert header.split() == ["method", "MAE/inflow", "RMSE/inflow", "MAE/outflow", "RMSE/outflow"]
    names = [r.split()[0] for r in rows]
    assert names == ["stllm", "last_value", "seasonal_naive_day", "seasonal_naive_week", "historical_average",
                     "level_average", "ridge", "encoder_only"]  # fmt: skip
    values = np.array([[float(v) for v in r.split()[1:]] for r in rows])
    assert np.isfinite(values).all() and (values > 0).all()
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    trained = json.loads((checkpoint / "split.json").read_text())
    assert not set(metrics["regions"]) & set(trained["regions"])  # held-out regions only
    assert metrics["time_range"][0] >= trained["time_range"][1]  # later than anything trained on
    for f in ("predictions.jsonl", "forecasts.png", "error_map.png", "table.txt"):
        assert (tmp_path / f).stat().st_size > 0, f
    assert abs(metrics["metrics"]["stllm"]["MAE/inflow"] - values[0, 0]) < 1e-3 * max(1, values[0, 0])
    # stllm against the best zero-shot baseline by mean MAE, with a paired region-bootstrap interval, printed
    mean_mae = {n: (v[0] + v[2]) / 2 for n, v in zip(names, values)}  # MAE/inflow, MAE/outflow columns
    best = min(names[1:-1], key=mean_mae.get)  # not encoder_only: the model's own stage-1 part
    c = metrics["comparisons"][f"stllm - {best}"]
    assert c["diff"] == pytest.approx(mean_mae["stllm"] - mean_mae[best], abs=2e-4) and c["low"] <= c["high"]
    assert c["units"] == len(metrics["regions"])
    assert f"difference stllm - {best}, MAE (all channels): {c['diff']:+.4f}" in printed


def test_overlap_is_refused_and_named(checkpoint, tmp_path):
    with pytest.raises(SplitError, match="overlaps training time"):
        evaluate(checkpoint, tmp_path, eval_start="2024-01-02", supervised=False, progress=False, plots=False)


def test_a_gpu_the_machine_lacks_is_refused_before_any_work(checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main([str(checkpoint), "--output_dir", str(tmp_path / "o"), "--device", "cuda", "--no_progress"]) == 2
    assert "--device cuda: this machine has no CUDA device" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_missing_checkpoint_part_is_named(checkpoint, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    (broken / "scaler.json").unlink()
    assert main([str(broken), "--output_dir", str(tmp_path / "o"), "--no_progress"]) == 2
    with pytest.raises(FileNotFoundError, match="scaler.json"):
        evaluate(broken, tmp_path / "o")


def test_channel_mismatch_is_refused(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="4 channels"):
        evaluate(checkpoint, tmp_path, data_overrides={"synthetic_task": "event", "synthetic_days": 60},
                 supervised=False, progress=False)  # fmt: skip


def test_evaluation_rebuilds_the_training_data_from_the_checkpoint(checkpoint):
    from stllm.eval.zero_shot import _data_args

    args = _data_args(checkpoint, {"data": None, "data_root": None})
    assert (args.synthetic_regions, args.synthetic_days) == (8, 21)  # not the defaults (24, 28)
    assert _data_args(checkpoint, {"synthetic_days": 12}).synthetic_days == 12


def test_cross_city_rescales_on_the_new_citys_history(checkpoint, tmp_path):
    res = evaluate(checkpoint, tmp_path, mode="cross-city", data_overrides={"synthetic_seed": 5},
                   eval_start="2024-01-09", eval_days=1, supervised=False, progress=False, plots=False)  # fmt: skip
    meta = json.loads((tmp_path / "metrics.json").read_text())
    assert meta["city"] == "synthetic-5" and meta["rescaled"] is True and len(meta["regions"]) == 8
    assert np.isfinite(res.metrics["stllm"]["MAE"])
    with pytest.raises(ValueError, match="needs a city other than the training city"):
        evaluate(checkpoint, tmp_path / "x", mode="cross-city", supervised=False, progress=False)


@pytest.fixture(scope="module")
def views_checkpoint(tmp_path_factory):
    """The older prompt layout: separate day/week history placeholders and a <GEO> slot."""
    return train_tiny_run(tmp_path_factory.mktemp("views"), "--synthetic_regions", "8", "--synthetic_days", "21",
                          "--context_days", "0", "--context_weeks", "0", "--extra_views", "day,week",
                          "--with_geo", "true", "--max_steps", "2")


@pytest.fixture(scope="module")
def compact_checkpoint(tmp_path_factory):
    """The compact prompt style (no filler), with a <GEO> slot."""
    return train_tiny_run(tmp_path_factory.mktemp("compact"), "--synthetic_regions", "8", "--synthetic_days", "21",
                          "--prompt_style", "compact", "--with_geo", "true", "--max_steps", "2")


@pytest.mark.parametrize("fixture", ["checkpoint", "views_checkpoint", "compact_checkpoint"])
def test_evaluated_prompts_equal_the_training_template(fixture, request, tmp_path):
    """Evaluation rebuilds exactly the training prompts (views, geo slots, context) from the checkpoint."""
    from stllm.eval.zero_shot import _data_args, eval_dataset
    from stllm.train.train_mem import prepare_data

    ckpt = request.getfixturevalue(fixture)
    d_args = _data_args(ckpt, {"val_fraction": 0})  # the whole training time: no validation part cut off
    data = prepare_data(d_args)
    enc = STLlamaForCausalLM.from_pretrained(ckpt).config.st_encoder
    ev = eval_dataset(data.city, data.scaler, d_args, enc, list(data.regions.train), data.train_time, stride=1)
    assert ev.prompt_style == ("compact" if fixture == "compact_checkpoint" else "urbangpt")
    for i in (0, len(ev) // 2, len(ev) - 1):
        a, b = data.train[i], ev[i]
        assert a["conversation"] == b["conversation"] and a["id"] == b["id"]
        assert [v.shape for _, v in a["history"]] == [v.shape for _, v in b["history"]]
        np.testing.assert_array_equal(a["geo"], b["geo"])
    if fixture == "views_checkpoint":
        assert ev[0]["conversation"].user.count("<ST_HIS>") == 3 and "<GEO>" in ev[0]["conversation"].user
        res = evaluate(ckpt, tmp_path, supervised=False, progress=False, plots=False, ridge=False)
        assert np.isfinite(res.metrics["stllm"]["MAE/inflow"])


def test_cross_city_from_npz_files_with_another_scale_region_count_and_step(checkpoint, tmp_path):
    """A city nobody prepared, as a plain npz (values, time): 5 regions at ten times the volume gives ten
    times the forecasts (scale-free inputs and the new city's own scaler, also for the level block's counts),
    and a daily city evaluates."""
    from stllm.cli import main as cli

    city = synthetic_city(seed=9, n_regions=5, days=28, freq="1h")
    files = {}
    for name, factor in (("base", 1.0), ("busy", 10.0)):
        files[name] = tmp_path / f"{name}.npz"
        np.savez(files[name], values=city.values * factor, time=city.timestamps.astype("datetime64[m]").astype(str))
    preds = {}
    for name, path in files.items():
        out = tmp_path / f"eval-{name}"
        assert cli(["eval", str(checkpoint), "--mode", "cross-city", "--data", str(path), "--output_dir", str(out),
                    "--eval_start", "2024-01-22", "--no_supervised", "--no_progress"]) == 0  # fmt: skip
        rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()[1:]]
        preds[name] = np.array([r["pred"] for r in rows])
        meta = json.loads((out / "metrics.json").read_text())
        assert len(meta["regions"]) == 5 and meta["rescaled"] is True
        assert {"stllm", "historical_average", "ridge"} <= set(meta["metrics"])
    # not to the digit: the level block's ratios are smoothed in counts (a quiet city's are shrunk more)
    ten = 10.0 * preds["base"]
    np.testing.assert_allclose(preds["busy"], ten, rtol=0.02, atol=0.01 * np.abs(ten).mean())
    daily = synthetic_city(seed=9, n_regions=4, days=90, freq="1h")
    per_day = daily.values.reshape(90, 24, 4, 2).sum(axis=1)
    days = (daily.timestamps[::24]).astype("datetime64[m]").astype(str)
    np.savez(tmp_path / "daily.npz", values=per_day, time=days)
    res = evaluate(checkpoint, tmp_path / "eval-daily", mode="cross-city", data=str(tmp_path / "daily.npz"),
                   supervised=False, progress=False, plots=False)  # fmt: skip
    assert np.isfinite(res.metrics["stllm"]["MAE"]) and np.isfinite(res.metrics["ridge"]["MAE"])


def test_seed_aggregate_is_mean_and_population_std():
    from stllm.eval.zero_shot import aggregate_seeds, format_seed_table

    runs = [{"stllm": {"MAE": 1.0}, "ha": {"MAE": 4.0}}, {"stllm": {"MAE": 3.0}, "ha": {"MAE": 4.0}}]
    agg = aggregate_seeds(runs)
    assert agg == {"stllm": {"MAE": (2.0, 1.0)}, "ha": {"MAE": (4.0, 0.0)}}
    assert "2.0000 +- 1.0000" in format_seed_table(agg, ["MAE"], [0, 1])
    with pytest.raises(ValueError, match="'ha' is missing from run"):
        aggregate_seeds([runs[0], {"stllm": {"MAE": 1.0}}])


# -- reliability: resume keys, content-based zero-shot checks, checks before the model pass --------------------
def _fast(**kw) -> dict:
    """Options that keep one evaluation of the tiny checkpoint to a second or two."""
    return {"supervised": False, "progress": False, "plots": False, **kw}


def _training_city(ckpt):
    from stllm.eval.zero_shot import _data_args
    from stllm.train.train_mem import load_city

    return load_city(_data_args(ckpt, {}))


def _save_npz(path, values, timestamps):
    np.savez(path, values=values, time=np.asarray(timestamps).astype("datetime64[m]").astype(str))
    return str(path)


def _perturb_heads(ckpt):
    """What retraining into the same directory looks like to evaluation: other weights under the same path."""
    import torch

    model = STLlamaForCausalLM.from_pretrained(ckpt)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.reg_head.parameters():
            p.add_(torch.randn_like(p))
    model.save_pretrained(ckpt)


def test_changed_weights_are_not_resumed_and_overwrite_starts_fresh(checkpoint, tmp_path):
    ckpt, out = tmp_path / "ckpt", tmp_path / "eval"
    shutil.copytree(checkpoint, ckpt)
    first = evaluate(ckpt, out, eval_days=1, **_fast(baselines=["last_value"]))
    rows_before = (out / "predictions.jsonl").read_text()
    _perturb_heads(ckpt)
    with pytest.raises(ValueError, match=r"differs in: weights\).*--overwrite"):
        evaluate(ckpt, out, eval_days=1, **_fast(baselines=["last_value"]))
    assert (out / "predictions.jsonl").read_text() == rows_before  # the refusal changed nothing
    second = evaluate(ckpt, out, eval_days=1, overwrite=True, **_fast(baselines=["last_value"]))
    assert (out / "predictions.jsonl").read_text() != rows_before
    assert second.metrics["stllm"]["MAE/inflow"] != first.metrics["stllm"]["MAE/inflow"]
    assert second.metrics["last_value"] == first.metrics["last_value"]  # same windows, only the model changed


def test_other_data_or_rescale_in_the_same_directory_is_refused_by_name(checkpoint, tmp_path):
    kw = _fast(mode="cross-city", eval_start="2024-01-09", eval_days=1, baselines=["last_value"])
    evaluate(checkpoint, tmp_path, data_overrides={"synthetic_seed": 5}, rescale=True, **kw)
    with pytest.raises(ValueError, match=r"differs in: .*options\.rescale.*scaler"):
        evaluate(checkpoint, tmp_path, data_overrides={"synthetic_seed": 5}, rescale=False, **kw)
    with pytest.raises(ValueError, match=r"differs in: data, scaler"):
        evaluate(checkpoint, tmp_path, data_overrides={"synthetic_seed": 6}, rescale=True, **kw)
    evaluate(checkpoint, tmp_path, data_overrides={"synthetic_seed": 5}, rescale=False, overwrite=True, **kw)
    meta = json.loads((tmp_path / "metrics.json").read_text())
    header = json.loads((tmp_path / "predictions.jsonl").read_text().splitlines()[0])["run"]
    assert meta["rescaled"] is False and header["options"]["rescale"] is False
    assert header["scaler"] == json.loads((checkpoint / "scaler.json").read_text())  # the rows' units, recorded


def test_the_training_data_under_another_name_is_the_training_city(checkpoint, tmp_path):
    """A renamed copy with its regions reversed (so the ids mean other zones) is refused as another city, and
    cross-region on it evaluates exactly the held-out zones, found by content; a copy relabelled a week later
    and cut differently is still refused."""
    city = _training_city(checkpoint)
    trained = set(json.loads((checkpoint / "split.json").read_text())["regions"])
    copy = _save_npz(tmp_path / "somewhere_else.npz", city.values[:, ::-1], city.timestamps)
    with pytest.raises(ValueError, match="needs a city other than the training city"):
        evaluate(checkpoint, tmp_path / "a", mode="cross-city", data=copy, **_fast())
    res = evaluate(checkpoint, tmp_path / "b", mode="cross-region", data=copy, **_fast(ridge=False))
    meta = json.loads((tmp_path / "b" / "metrics.json").read_text())
    n = city.n_regions
    assert {str(n - 1 - int(r)) for r in meta["regions"]} == set(city.region_ids) - trained
    assert meta["time_range"][0] >= json.loads((checkpoint / "split.json").read_text())["time_range"][1]
    assert np.isfinite(res.metrics["stllm"]["MAE"])
    shifted = _save_npz(tmp_path / "later.npz", city.values[30:, [2, 0, 4]],
                        city.timestamps[30:] + np.timedelta64(7, "D"))  # fmt: skip
    with pytest.raises(ValueError, match="needs a city other than the training city"):
        evaluate(checkpoint, tmp_path / "c", mode="cross-dataset", data=shifted, **_fast())
    with pytest.raises(SplitError, match=r"overlaps training time .*relabelled"):  # held-out zones, trained days
        evaluate(checkpoint, tmp_path / "d", mode="cross-region", data=shifted, eval_start="2024-01-12", **_fast())


def test_cross_dataset_on_another_city_fits_the_ridge_on_the_training_data(checkpoint, tmp_path, monkeypatch):
    from stllm.eval import zero_shot

    seen = {}
    real = zero_shot.run_baselines
    monkeypatch.setattr(zero_shot, "run_baselines", lambda *a, **kw: seen.update(kw) or real(*a, **kw))
    res = evaluate(checkpoint, tmp_path, mode="cross-dataset", data_overrides={"synthetic_seed": 7},
                   eval_start="2024-01-09", eval_days=2, **_fast())  # fmt: skip
    meta = json.loads((tmp_path / "metrics.json").read_text())
    assert meta["city"] == "synthetic-7" and len(meta["regions"]) == 8 and meta["rescaled"] is True
    assert {"stllm", "ridge", "historical_average"} <= set(res.metrics) and np.isfinite(res.metrics["ridge"]["MAE"])
    fit = seen["ridge_kwargs"]
    split = json.loads((checkpoint / "split.json").read_text())
    assert fit["fit_city"].name == "synthetic-0" and fit["fit_regions"] == split["regions"]
    np.testing.assert_array_equal(fit["fit_city"].values, _training_city(checkpoint).values)


@pytest.fixture(scope="module")
def event_checkpoint(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("events"), "--synthetic_regions", "8", "--synthetic_days", "60",
                          "--synthetic_task", "event", "--input_len", "7", "--output_len", "3",
                          "--context_days", "0", "--context_weeks", "1", "--max_steps", "3")


def test_event_zero_shot_reports_recall_and_f1_per_category(event_checkpoint, tmp_path):
    res = evaluate(event_checkpoint, tmp_path, compare={"again": event_checkpoint}, **_fast())
    city = _training_city(event_checkpoint)
    cats = list(city.channels)
    assert res.columns == [f"{m}/{c}" for c in cats for m in ("Recall", "F1")] + ["Macro-Recall", "Macro-F1",
                                                                                    "Macro-F1 (val thr)"]
    assert [c.strip() for c in res.table.splitlines()[0].split("  ") if c.strip()][1:] == res.columns
    meta = json.loads((tmp_path / "metrics.json").read_text())
    thresholds = meta["event_thresholds"]
    assert set(thresholds) == set(res.metrics)  # every method gets its own, chosen on validation windows
    assert thresholds["again"] == thresholds["stllm"]  # a compared checkpoint: on the same windows
    # those windows: the checkpoint's training regions, targets before the first evaluated one
    split = json.loads((event_checkpoint / "split.json").read_text())
    assert meta["threshold_windows"]["regions"] == split["regions"] and not set(split["regions"]) & set(meta["regions"])
    assert np.datetime64(meta["threshold_windows"]["time_range"][1]) < np.datetime64(meta["time_range"][0])
    # recount the stllm row from the prediction file and the raw counts, at 0.5 and at its thresholds
    for threshold, macro in ((np.full(len(cats), 0.5), "Macro-F1"),
                             (np.array([thresholds["stllm"][c] for c in cats]), "Macro-F1 (val thr)")):
        tp, fn, fp = np.zeros(len(cats)), np.zeros(len(cats)), np.zeros(len(cats))
        for line in (tmp_path / "predictions.jsonl").read_text().splitlines()[1:]:
            row = json.loads(line)
            region, first = row["key"].split("|")
            t = city.time_index(first)
            y = city.values[t : t + 3, int(city.region_index([region])[0])] > 0  # an event is a count > 0
            p = np.asarray(row["pred"]) >= threshold
            tp, fn, fp = tp + (p & y).sum(0), fn + (~p & y).sum(0), fp + (p & ~y).sum(0)
        recall = tp / np.maximum(tp + fn, 1)
        f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
        got = res.metrics["stllm"]
        assert got[macro] == pytest.approx(f1.mean())
        if macro == "Macro-F1":
            np.testing.assert_allclose([got[f"Recall/{c}"] for c in cats], recall, atol=1e-9)
            np.testing.assert_allclose([got[f"F1/{c}"] for c in cats], f1, atol=1e-9)
    for row in res.metrics.values():
        assert all(0 <= row[c] <= 1 for c in res.columns)
    # each stllm row against the best zero-shot baseline at validation thresholds, with a region-bootstrap interval
    assert "logistic" in res.metrics  # events: the logistic classifier is a default baseline
    baselines = [k for k in res.metrics if k not in ("stllm", "again", "encoder_only") and "not zero-shot" not in k]
    best = max(baselines, key=lambda k: res.metrics[k]["Macro-F1 (val thr)"])
    assert set(meta["comparisons"]) == {f"stllm - {best}", f"again - {best}"}
    c = meta["comparisons"][f"stllm - {best}"]
    gap = res.metrics["stllm"]["Macro-F1 (val thr)"] - res.metrics[best]["Macro-F1 (val thr)"]
    assert c["diff"] == pytest.approx(gap) and c["low"] <= c["high"] and c["units"] == len(meta["regions"])
    assert f"difference stllm - {best}, Macro-F1 (val thr): {gap:+.4f} (95% interval" in res.table


def test_supervised_reference_runs_with_enough_history_and_is_skipped_without(checkpoint, tmp_path, caplog,
                                                                              monkeypatch):  # fmt: skip
    monkeypatch.setattr("stllm.eval.zero_shot.SUPERVISED_TRAINING", {"epochs": 1, "steps_per_epoch": 5})
    res = evaluate(checkpoint, tmp_path / "a", eval_days=1, **_fast(supervised=True, baselines=["last_value"]))
    assert list(res.metrics) == ["stllm", "last_value", "supervised_encoder (not zero-shot)"]
    assert np.isfinite(res.metrics["supervised_encoder (not zero-shot)"]["MAE/inflow"])
    with caplog.at_level("WARNING", logger="stllm"):
        short = evaluate(checkpoint, tmp_path / "b", mode="cross-city", data_overrides={"synthetic_seed": 5},
                         eval_start="2024-01-09", eval_days=1, **_fast(supervised=True))  # fmt: skip
    assert not any("supervised" in k for k in short.metrics)
    assert "supervised_encoder skipped" in caplog.text and "skipped supervised_encoder (not zero-shot)" in short.table
    assert "supervised_encoder" in json.loads((tmp_path / "b" / "metrics.json").read_text())["skipped"]


def test_allow_overlap_evaluates_what_is_refused_without_it(checkpoint, tmp_path):
    with pytest.raises(SplitError, match="overlaps training time"):
        evaluate(checkpoint, tmp_path, eval_start="2024-01-10", eval_days=1, **_fast())
    res = evaluate(checkpoint, tmp_path, eval_start="2024-01-10", eval_days=1, allow_overlap=True, **_fast())
    meta = json.loads((tmp_path / "metrics.json").read_text())
    split = json.loads((checkpoint / "split.json").read_text())
    assert meta["time_range"][0] < split["time_range"][1]  # inside the training time, as asked
    assert not set(meta["regions"]) & set(split["regions"]) and np.isfinite(res.metrics["stllm"]["MAE/inflow"])


def test_rescaled_scaler_comes_from_the_evaluated_citys_history_only(checkpoint, tmp_path):
    from stllm.data import STScaler

    city = synthetic_city(seed=9, n_regions=5, days=28, freq="1h")
    first_target = city.time_index("2024-01-22")
    future = city.values.copy()
    future[first_target:] *= 100  # other targets, same history
    history = city.values.copy()
    history[: first_target - 48] *= 3  # other history
    scalers = {}
    for name, values, rescale in (("base", city.values, True), ("future", future, True), ("history", history, True),
                                  ("own", city.values, False)):  # fmt: skip
        path = _save_npz(tmp_path / f"{name}.npz", values, city.timestamps)
        evaluate(checkpoint, tmp_path / name, mode="cross-city", data=path, eval_start="2024-01-22", eval_days=1,
                 rescale=rescale, **_fast(baselines=["last_value"]))  # fmt: skip
        scalers[name] = STScaler.load(tmp_path / name / "encoder_from_checkpoint" / "scaler.json")
    trained = STScaler.load(checkpoint / "scaler.json")
    assert scalers["base"] == scalers["future"]  # the targets never set the scale
    assert scalers["base"] != scalers["history"] and scalers["base"] != trained
    assert scalers["own"] == trained  # --rescale no keeps the checkpoint's units


def test_generate_mode_rows_parse_and_failures_are_counted_in_the_name(checkpoint, tmp_path):
    import re

    res = evaluate(checkpoint, tmp_path, eval_days=1, generate=True, **_fast(baselines=["last_value"]))
    name = next(iter(res.metrics))
    parsed, total = map(int, re.fullmatch(r"stllm \(generate, (\d+)/(\d+) parsed\)", name).groups())
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()[1:]]
    meta = json.loads((tmp_path / "metrics.json").read_text())
    assert total == len(rows) == meta["windows"] * len(meta["regions"])
    assert parsed == sum(r["pred"] is not None for r in rows) and meta["generate_failures"] == total - parsed
    assert json.loads((tmp_path / "predictions.jsonl").read_text().splitlines()[0])["run"]["options"]["generate"]


@pytest.mark.parametrize(("kwargs", "flag"), [
    ({"batch_size": 0}, "--batch_size"), ({"batch_size": -1}, "--batch_size"), ({"stride": 0}, "--stride"),
    ({"stride": -3}, "--stride"), ({"eval_days": 0}, "--eval_days"), ({"eval_days": -1}, "--eval_days"),
    ({"eval_start": "2023-06-01"}, "--eval_start"), ({"eval_start": "2030-01-01"}, "--eval_start"),
    ({"eval_start": "2024-01-21T20:00"}, "--eval_days"), ({"eval_days": 0.25}, "--eval_days"),
    ({"baselines": ["nope"]}, "--baselines"),
])  # fmt: skip
def test_bad_flags_are_refused_by_name_before_any_work(checkpoint, tmp_path, monkeypatch, kwargs, flag):
    from stllm.eval import zero_shot

    monkeypatch.setattr(zero_shot.STLlamaForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("loaded"))
    with pytest.raises(ValueError, match=flag):
        evaluate(checkpoint, tmp_path, **_fast(**kwargs))


@pytest.fixture(scope="module")
def short_context_checkpoint(tmp_path_factory):
    """A model that reads only the recent steps: its first window needs no day of history."""
    return train_tiny_run(tmp_path_factory.mktemp("short"), "--synthetic_regions", "6", "--synthetic_days", "21",
                          "--context_days", "0", "--context_weeks", "0", "--max_steps", "1")


def test_failures_that_came_after_the_model_pass_come_before_it(short_context_checkpoint, checkpoint, tmp_path,
                                                                monkeypatch, capsys):  # fmt: skip
    """The README's cross-dataset case: a model without long context on a city with hours of history before its
    first target. The seasonal baselines cannot run: skipped with a note by default, refused when asked for."""
    from stllm.eval import zero_shot

    calls = []
    real = zero_shot.predict
    monkeypatch.setattr(zero_shot, "predict", lambda *a, **kw: calls.append(kw["output"]) or real(*a, **kw))
    kw = _fast(mode="cross-city", data_overrides={"synthetic_seed": 5})
    res = evaluate(short_context_checkpoint, tmp_path / "a", **kw)
    assert {"seasonal_naive_day", "seasonal_naive_week", "historical_average"}.isdisjoint(res.metrics)
    assert "skipped seasonal_naive_week: needs 168 steps" in res.table and "last_value" in res.metrics
    calls.clear()
    for bad, match in ((dict(baselines=["seasonal_naive_day"]), "'seasonal_naive_day' .--baselines. needs 24"),
                       (dict(compare={"other": tmp_path / "missing"}), "compared checkpoint 'other'"),
                       (dict(output_dir=checkpoint), "already holds a training run")):  # fmt: skip
        with pytest.raises((ValueError, FileNotFoundError, FileExistsError), match=match):
            evaluate(short_context_checkpoint, bad.pop("output_dir", tmp_path / "b"), **{**kw, **bad})
    assert calls == []  # refused before any model pass
    assert main([str(short_context_checkpoint), "--output_dir", str(checkpoint), "--no_progress"]) == 2
    assert "already holds a training run" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["split.json", "scaler.json", "data_args.json"])
def test_a_truncated_checkpoint_file_is_named(checkpoint, tmp_path, name):
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    text = (broken / name).read_text()
    (broken / name).write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=rf"{broken / name}: .*(corrupt|truncated|Expecting|Unterminated)"):
        evaluate(broken, tmp_path / "o", **_fast())


def test_a_missing_tokenizer_file_is_named(checkpoint, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    (broken / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"tokenizer.json or tokenizer.model"):
        evaluate(broken, tmp_path / "o", **_fast())


def test_recent_views_checkpoint_is_evaluated_with_its_own_context(tmp_path):
    """A checkpoint trained with ``--context_recent_views true`` reads 24-step views (12 recent + 12 target
    slots); evaluation must rebuild that context from the checkpoint (the default 12-step views would not fit
    the encoder, which refuses a context of another length)."""
    ckpt = train_tiny_run(tmp_path / "ckpt", "--synthetic_regions", "6", "--synthetic_days", "24",
                          "--context_days", "1", "--context_weeks", "1", "--context_recent_views", "true",
                          "--max_steps", "1")  # fmt: skip
    model = STLlamaForCausalLM.from_pretrained(ckpt)
    cfg = model.st_encoder.config
    assert cfg.recent_views and cfg.context_length == 2 * 24 + 12 + 2 * 24  # and the level block: a day, a week back
    res = evaluate(ckpt, tmp_path / "ev", eval_days=2, **_fast(baselines=["historical_average", "ridge"]))
    assert {"stllm", "historical_average", "ridge"} <= set(res.metrics)
    assert all(np.isfinite(v) for v in res.metrics["stllm"].values())
