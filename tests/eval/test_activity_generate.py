"""stllm train-gen -> generate -> eval gen on the synthetic days: what the checkpoint records, generation that
always parses, refusal of trained days, the JSONL round trip, the evaluation table and the CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from stllm.cli import main as cli_main
from stllm.data.activity import load_activity_split
from stllm.data.activity_prompts import gen_conversation
from stllm.data.loaders import data_root
from stllm.eval.generate import (
    SamplingConfig,
    as_chains,
    check_not_trained_on,
    generate_texts,
    load_gen_checkpoint,
    read_generated,
    write_generated,
)
from stllm.train.arguments import parse_args
from stllm.train.train_gen import GenDataArguments, train_gen


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "model"
    train_gen(*parse_args(["--output_dir", str(out), "--data", "synthetic", "--max_steps", "4",
                           "--per_device_train_batch_size", "8", "--save_strategy", "no", "--disable_tqdm", "true",
                           "--tokenizer_vocab", "400", "--max_lines", "8", "--full_finetune", "true"],
                          data_class=GenDataArguments))
    return out


@pytest.fixture(scope="module")
def split():
    return load_activity_split("synthetic")


def test_checkpoint_records_training_days_and_vocabulary(checkpoint, split):
    record = json.loads((checkpoint / "activity_data.json").read_text())
    assert record["name"] == "synthetic" and record["with_coords"] and record["max_lines"] == 8
    trained, val = set(record["trained_days"]), set(record["validation_days"])
    assert trained | val == {f"{c.user}/{c.date}" for c in split.train} and not trained & val
    last = {}
    for c in split.train:
        last[c.user] = max(last.get(c.user, c.date), c.date)
    assert val == {f"{u}/{d}" for u, d in last.items()}  # --val_days 1: each user's last training day (28-day users)
    assert record["categories"] == sorted({a.category for c in split.train for a in c.activities})
    assert {tuple(p) for p in record["places"]} == {(a.category, f"{a.lat:.3f},{a.lon:.3f}")
                                                     for c in split.train for a in c.activities}
    assert not {f"{c.user}/{c.date}" for c in split.test} & set(record["trained_days"])


def test_generated_days_parse_and_follow_the_request(checkpoint, split, tmp_path):
    model, tok, record = load_gen_checkpoint(checkpoint)
    requests = [replace(c, steps=()) for c in split.test[:6]]
    texts = generate_texts(model, tok, record, requests, SamplingConfig(batch_size=4, n=2, max_new_tokens=96),
                           progress=False)
    chains = as_chains(requests, texts)
    assert len(chains) == 12 and [c.user for c in chains[:2]] == [requests[0].user] * 2
    for c in chains:
        assert 1 <= len(c.activities) <= 8
        assert all([a.category, f"{a.lat:.3f},{a.lon:.3f}"] in record["places"] for a in c.activities)
        starts = [a.start for a in c.activities]
        assert starts == sorted(starts)
    path = write_generated(tmp_path / "days.jsonl", requests, texts)
    assert read_generated(path, requests) == [replace(c, source=str(path)) for c in chains]
    with pytest.raises(ValueError, match=r"days.jsonl: line 1: field 'user'/'date'"):
        read_generated(path, requests[1:])


def test_trained_days_are_refused(checkpoint, split):
    _, _, record = load_gen_checkpoint(checkpoint)
    with pytest.raises(ValueError, match="field 'date': the checkpoint trained on this day"):
        check_not_trained_on([split.train[3]], record)
    check_not_trained_on(split.test, record)


def test_prompt_is_the_same_for_training_and_generation(split):
    day = split.test[0]
    assert gen_conversation(day, True).user == gen_conversation(replace(day, steps=()), True).user
    assert gen_conversation(day, True).answer.splitlines()[0].startswith("A ")


def test_eval_gen_cli_prints_the_table_and_writes_metrics(checkpoint, tmp_path, capsys):
    code = cli_main(["eval", "gen", str(checkpoint), "--max_requests", "12", "--seeds", "0,1",
                     "--max_new_tokens", "96", "--output_dir", str(tmp_path / "ev")])
    assert code == 0
    printed = capsys.readouterr().out
    for name in ("real test", "copy", "markov-user", "markov-pop", "stllm"):
        assert name in printed
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert len(metrics["rows"]["stllm"]) == 2 and metrics["rows"]["copy"][0]["copies"] == 1.0
    assert (tmp_path / "ev" / "days_map.png").is_file() and (tmp_path / "ev" / "generated_seed1.jsonl").is_file()


def test_eval_gen_cli_fits_the_per_user_correction_on_validation_days(checkpoint, tmp_path, capsys):
    code = cli_main(["eval", "gen", str(checkpoint), "--max_requests", "8", "--seeds", "0", "--max_new_tokens", "96",
                     "--correction", "user", "--output_dir", str(tmp_path / "ev")])
    assert code == 0 and "category correction per user" in capsys.readouterr().out
    sampling = json.loads((tmp_path / "ev" / "metrics.json").read_text())["sampling"]
    _, _, record = load_gen_checkpoint(checkpoint)
    val_users = {k.split("/")[0] for k in record["validation_days"]}
    assert sampling["user_category_bias"] and set(sampling["user_category_bias"]) <= val_users
    assert not sampling["category_bias"]
    assert all(abs(b) <= 2.0 for u in sampling["user_category_bias"].values() for b in u.values())


def test_generate_cli_and_its_errors(checkpoint, tmp_path, capsys):
    req = tmp_path / "req.txt"
    req.write_text("user: u0001\npersona: categories=Office,Bar; hours=08-22\ndate: 2030-01-07 Mon\n\n"
                   "persona: group=visitor\ndate: 2030-01-12 Sat\n")
    out = tmp_path / "g.jsonl"
    assert cli_main(["generate", str(checkpoint), "--requests", str(req), "--n", "2",
                     "--max_new_tokens", "96", "--output", str(out)]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(x["request"], x["sample"], x["user"], x["date"]) for x in lines] == [
        (0, 0, "u0001", "2030-01-07"), (0, 1, "u0001", "2030-01-07"), (1, 0, None, "2030-01-12"),
        (1, 1, None, "2030-01-12")]
    assert cli_main(["generate", str(tmp_path / "none"), "--output", str(out)]) == 2
    assert "checkpoint directory not found" in capsys.readouterr().err
    assert cli_main(["train-gen", "--data", "paris", "--output_dir", str(tmp_path / "x")]) == 2
    assert "--data must be one of tokyo, nyc, synthetic" in capsys.readouterr().err


@pytest.mark.skipif(not (data_root() / "foursquare_nyc").is_dir(), reason="shared data not present")
def test_nyc_gen_demo_runs_the_whole_loop(tmp_path, capsys):
    from stllm.demo import run_gen_demo

    result = run_gen_demo(tmp_path, "nyc-gen", steps=2, progress=False, max_requests=6)
    assert result["data"] == "nyc" and result["n_requests"] == 6 and len(result["rows"]["stllm"]) == 3
    assert "markov-pop" in capsys.readouterr().out and (tmp_path / "eval" / "days_map.png").is_file()


def test_lora_on_a_pretrained_backbone_trains_and_generates(tmp_path, split):
    """Any HF causal LM: a saved Llama folder is wrapped, tuned with LoRA (the default on a pretrained
    backbone), and its checkpoint generates days that parse."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from stllm.data.activity_prompts import ActivityGenDataset
    from stllm.data.prompts import ChatFormatter
    from stllm.data.tokenizer import train_tokenizer

    fmt = ChatFormatter(None)
    ds = ActivityGenDataset(split.train[:200], with_coords=True)
    tok = train_tokenizer(["\n".join(fmt(ds[i]["conversation"])) for i in range(len(ds))], vocab_size=400)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 num_key_value_heads=1, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
                     ).save_pretrained(tmp_path / "backbone")
    tok.save_pretrained(tmp_path / "backbone")
    out = tmp_path / "lora"
    trainer = train_gen(*parse_args(["--output_dir", str(out), "--data", "synthetic", "--max_steps", "2",
                                     "--model_name_or_path", str(tmp_path / "backbone"), "--lora_r", "4",
                                     "--per_device_train_batch_size", "4", "--save_strategy", "no",
                                     "--disable_tqdm", "true", "--max_lines", "6"], data_class=GenDataArguments))
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable) and not any("q_proj.base_layer" in n for n in trainable)
    model, tok2, record = load_gen_checkpoint(out)
    texts = generate_texts(model, tok2, record, [replace(c, steps=()) for c in split.test[:3]],
                           SamplingConfig(batch_size=3, max_new_tokens=64), progress=False)
    assert all(1 <= len(c.activities) <= 6 for c in as_chains(split.test[:3], texts))


def test_redraw_invalid_draws_again_only_what_fails(checkpoint, split):
    from stllm.data.activity_checks import CheckConfig
    from stllm.eval.generate import redraw_invalid

    model, tok, record = load_gen_checkpoint(checkpoint)
    requests = [replace(c, steps=()) for c in split.test[:4]]
    cfg = SamplingConfig(batch_size=4, max_new_tokens=96)
    texts = generate_texts(model, tok, record, requests, cfg, progress=False)
    same, n = redraw_invalid(model, tok, record, requests, texts, cfg, CheckConfig(), redraws=0, progress=False)
    assert (same, n) == (texts, 0)
    box = CheckConfig(box=(0.0, 1.0, 0.0, 1.0))  # no synthetic place lies in it: every day fails, every draw
    again, n = redraw_invalid(model, tok, record, requests, texts, cfg, box, redraws=2, progress=False)
    assert n == 4 and len(as_chains(requests, again)) == 4


def test_validation_days_are_refused_when_they_are_test_or_trained_days(checkpoint, split):
    from stllm.eval.activity_eval import validation_days

    _, _, record = load_gen_checkpoint(checkpoint)
    val = validation_days(record, split)
    assert {f"{c.user}/{c.date}" for c in val} == set(record["validation_days"]) and len(val) == 30
    test_day = f"{split.test[0].user}/{split.test[0].date}"
    with pytest.raises(ValueError, match="field 'validation_days': 1 are test or trained days"):
        validation_days({**record, "validation_days": [*record["validation_days"], test_day]}, split)
    with pytest.raises(ValueError, match="field 'validation_days' is empty"):
        validation_days({**record, "validation_days": []}, split)


def test_select_sampling_picks_the_grid_point_closest_to_validation_days(checkpoint, split):
    from stllm.eval.activity_eval import select_sampling
    from stllm.eval.generate import trained_own_choices

    model, tok, record = load_gen_checkpoint(checkpoint)
    own = trained_own_choices(record, split.train)
    trained = set(record["trained_days"])
    for user in sorted(own.choices)[:3]:  # a user's own places: those of their trained days, never a validation day's
        assert own.choices[user] == {(a.category, f"{a.lat:.3f},{a.lon:.3f}") for c in split.train
                             if c.user == user and f"{c.user}/{c.date}" in trained for a in c.activities}
    chosen, grid = select_sampling(model, tok, record, split, SamplingConfig(batch_size=16, max_new_tokens=64), own,
                                   progress=False, max_requests=8, grid={"temperature": (0.7, 1.3),
                                   "prefer_own": (2.0,), "prefer_hours": (1.0,), "user_prior": (0.5,),
                                   "category_correction": (0, 1, 2, 3)}, score="margin")
    assert [(g["temperature"], g["prefer_own"], g["prefer_hours"], g["user_prior"], g["category_correction"])
            for g in grid] == [(t, 2.0, 1.0, 0.5, k) for t in (0.7, 1.3) for k in (0, 1, 2, 3)]
    assert sum(g["chosen"] for g in grid) == 1 and all(g["noise_se"] > 0 for g in grid)
    ok = [g for g in grid if g["valid"] >= 0.95] or grid
    best = min(ok, key=lambda g: g["margin"])
    assert (chosen.temperature, chosen.prefer_own, chosen.prefer_hours, chosen.user_prior) == (
        best["temperature"], best["prefer_own"], 1.0, 0.5)
    # b travels with the chosen point: population (1) or per user (2), never both
    assert (bool(chosen.category_bias), bool(chosen.user_category_bias)) == (
        best["category_correction"] == 1, best["category_correction"] in (2, 3))
    assert best["diff_se"] == 0.0 and all(g["margin_se"] > 0 for g in grid)
    assert chosen.batch_size == 16 and chosen.max_new_tokens == 64
    with pytest.raises(ValueError, match="field 'warmth' is not a sampling setting"):
        select_sampling(model, tok, record, split, SamplingConfig(), own, grid={"warmth": (1.0,)})


def test_late_grid_keys_are_tried_only_at_the_best_point_of_the_rest(checkpoint, split):
    from stllm.eval.activity_eval import FIXES, select_sampling
    from stllm.eval.generate import trained_own_choices

    model, tok, record = load_gen_checkpoint(checkpoint)
    own = trained_own_choices(record, split.train)
    chosen, rows = select_sampling(model, tok, record, split, SamplingConfig(batch_size=16, max_new_tokens=64,
                                                                             user_prior=0.5), own, progress=False,
                                   max_requests=8, grid={"temperature": (0.7, 1.3), FIXES: (0, 1),
                                                         "category_prior": (0.0, 1.0), "category_correction": (0, 1)},
                                   score="margin")
    # 4 points without the late keys, then their 3 other combinations at the best of them (margin: the lowest) and
    # its correction only
    assert [(g["temperature"], g[FIXES], g["category_prior"], g["category_correction"]) for g in rows[:4]] == [
        (t, 0, 0.0, k) for t in (0.7, 1.3) for k in (0, 1)]
    ok = [g for g in rows[:4] if g["valid"] >= 0.95] or rows[:4]
    top = min(ok, key=lambda g: g["margin"])
    t, k = top["temperature"], top["category_correction"]
    assert [(g["temperature"], g[FIXES], g["category_prior"], g["category_correction"]) for g in rows[4:]] == [
        (t, 0, 1.0, k), (t, 1, 0.0, k), (t, 1, 1.0, k)]
    pick = next(g for g in rows if g["chosen"])
    assert (chosen.temperature, chosen.category_prior) == (pick["temperature"], pick["category_prior"])
    assert chosen.repeats == chosen.time_gaps == chosen.user_prior_first == float(pick[FIXES])
    with pytest.raises(ValueError, match="field 'decoder_fixes'"):
        select_sampling(model, tok, record, split, SamplingConfig(), own, grid={FIXES: (2,)})


def test_validation_days_enter_the_users_history_only_at_test_time(checkpoint, split, tmp_path, monkeypatch):
    import datetime as dt
    import math

    from stllm.data.activity import Activity, ActivityChain
    from stllm.eval import activity_eval
    from stllm.eval.generate import trained_own_choices, with_category_prior

    # hand-made: user u trained on Jan 1 (Home at 08:10), Jan 2 (Gym at 21:00) is a validation day
    a = ActivityChain(date=dt.date(2024, 1, 1), user="u", steps=(Activity("Home", start=8 * 3600 + 600),))
    b = ActivityChain(date=dt.date(2024, 1, 2), user="u", steps=(Activity("Gym", start=21 * 3600),))
    rec = {"trained_days": ["u/2024-01-01"], "validation_days": ["u/2024-01-02"], "with_coords": False, "digits": 3}
    sel, test = trained_own_choices(rec, [a, b]), trained_own_choices(rec, [a, b], with_validation=True)
    assert sel.days == (a,) and sel.choices == {"u": {"Home"}}
    assert np.flatnonzero(sel.minutes["u"]).tolist() == list(range(480, 540))
    assert test.days == (a, b) and test.choices == {"u": {"Home", "Gym"}}
    assert np.flatnonzero(test.minutes["u"]).tolist() == [*range(480, 540), *range(1260, 1320)]
    # the category prior (alpha 5): Home alone, share 1: log(1 + 1/5); then Home and Gym, 1/2 each: log(1 + 1/2.5)
    cfg = SamplingConfig(category_prior=1.0)
    assert with_category_prior(cfg, sel).user_category_bias == (("u", (("Home", pytest.approx(math.log(1.2))),)),)
    assert dict(dict(with_category_prior(cfg, test).user_category_bias)["u"]) == pytest.approx(
        {"Gym": math.log(1.4), "Home": math.log(1.4)})
    # evaluate_generation: selection's draws know the trained days only, the test days' draws the validation days too
    model, tok, record = load_gen_checkpoint(checkpoint)
    calls = []
    original = activity_eval.generate_texts

    def spy(model, tokenizer, record, requests, cfg, progress=True, own=None, *args):
        calls.append(({f"{r.user}/{r.date}" for r in requests}, {f"{d.user}/{d.date}" for d in own.days}))
        return original(model, tokenizer, record, requests, cfg, progress, own, *args)

    monkeypatch.setattr(activity_eval, "generate_texts", spy)
    activity_eval.evaluate_generation(checkpoint, tmp_path, [0], SamplingConfig(batch_size=16, max_new_tokens=64,
                                                                                user_prior=0.5),
                                      max_requests=4, progress=False, select=True, select_grid={"temperature": (1.0,)})
    trained, val = set(record["trained_days"]), set(record["validation_days"])
    tests = {f"{c.user}/{c.date}" for c in split.test}
    assert len(calls) == 2 and calls[0][0] <= val and calls[0][1] == trained
    assert calls[1][0] <= tests and calls[1][1] == trained | val


def test_bootstrap_margins_resample_requests_and_pair_settings(split):
    from stllm.eval.activity_eval import bootstrap_margins

    real = split.test[:6]
    assert bootstrap_margins(list(real), real, list(real), draws=1, n_boot=5) == pytest.approx(np.zeros(5))
    shifted = [*real[1:], real[0]]  # other days for each request: each resample's score differs, same seed repeats
    assert bootstrap_margins(shifted, real, shifted, draws=1, n_boot=5) == pytest.approx(np.ones(5))  # = reference
    a = bootstrap_margins(shifted, real, list(real), draws=1, n_boot=20, seed=3)
    assert np.array_equal(a, bootstrap_margins(shifted, real, list(real), draws=1, n_boot=20, seed=3))
    assert a.std() > 0
    with pytest.raises(ValueError, match="for 6 requests x 2"):
        bootstrap_margins(list(real), real, list(real), draws=2)


def test_margin_score_weighs_each_distribution_by_the_reference():
    from stllm.eval.activity_eval import margin_score

    ref = {"category": 0.04, "start": 0.01, "n_activities": 0.02, "step_km": 0.002, "gyration_km": float("nan")}
    row = {"category": 0.02, "start": 0.01, "n_activities": 0.04, "step_km": 0.004, "gyration_km": 0.5}
    assert margin_score(row, ref) == pytest.approx((0.5 + 1 + 2 + 2) / 4)  # gyration: no reference, left out


def test_user_prior_share_one_writes_the_users_own_places(checkpoint, split):
    from stllm.data.activity_prompts import place_key
    from stllm.eval.generate import trained_own_choices

    model, tok, record = load_gen_checkpoint(checkpoint)
    own = trained_own_choices(record, split.train)
    requests = [replace(c, steps=()) for c in split.test[:12]]

    def own_share(w: float) -> float:
        cfg = SamplingConfig(batch_size=12, max_new_tokens=96, user_prior=w)
        days = as_chains(requests, generate_texts(model, tok, record, requests, cfg, progress=False, own=own))
        hits = [place_key(a) in own.choices[d.user] for d in days for a in d.activities]
        return sum(hits) / len(hits)

    forced, free = own_share(1.0), own_share(0.0)
    assert forced > 0.8 and forced > free  # the prior's mass is on the user's own (previous place, hour) moves
    with pytest.raises(ValueError, match="user_prior"):
        SamplingConfig(user_prior=1.5)



def test_time_gaps_and_repeats_reach_the_decoder_and_every_day_parses(checkpoint, split):
    from stllm.eval.generate import trained_own_choices

    model, tok, record = load_gen_checkpoint(checkpoint)
    own = trained_own_choices(record, split.train)
    requests = [replace(c, steps=()) for c in split.test[:12]]
    cfg = SamplingConfig(batch_size=12, max_new_tokens=96, time_gaps=1.0, repeats=1.0)
    assert cfg.uses_prior and SamplingConfig(time_gaps=0.5).uses_prior and SamplingConfig(user_prior_first=1).uses_prior
    days = as_chains(requests, generate_texts(model, tok, record, requests, cfg, progress=False, own=own))
    assert len(days) == 12 and all(a.start <= b.start for d in days for a, b in zip(d.activities, d.activities[1:]))
    for field in ("time_gaps", "repeats", "user_prior_first"):
        with pytest.raises(ValueError, match=field):
            SamplingConfig(**{field: 1.5})

def test_noise_score_counts_each_jsd_in_units_of_its_bootstrap_sd():
    from stllm.eval.activity_eval import noise_score

    jsds = np.array([[0.04, 0.010, np.nan], [0.05, 0.005, np.nan]])
    scale = np.array([0.01, 0.005, 0.02])  # the third distribution is undefined (no coordinates): left out
    np.testing.assert_allclose(noise_score(jsds, scale), [4 + 2, 5 + 1])


def test_one_se_rule_takes_the_point_closest_to_the_defaults_among_those_near_the_best():
    from stllm.eval.activity_eval import one_se_choice

    scores = np.array([10.0, 9.0, 9.5, 8.0])
    diff_se = np.array([1.0, 1.5, 2.0, 0.0])  # 0: 2 above the best at SE 1 (out); 1, 2 within one SE
    distance = np.array([0, 2, 1, 3])
    ok = np.array([True, True, True, True])
    assert one_se_choice(scores, diff_se, distance, ok) == 2
    assert one_se_choice(scores, diff_se, np.array([0, 1, 1, 3]), ok) == 1  # tie on distance: the lower score
    # an invalid point is neither the best nor chosen: the best valid one is 1 (9.0), 0 lies within 1.0 of it
    assert one_se_choice(scores, np.array([1.0, 0.0, 0.1, 0.0]), distance, np.array([True, True, True, False])) == 0
