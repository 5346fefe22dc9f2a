"""GEO-BLEU / DTW against the official reference vectors, hand-worked cases and the logged per-user values."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from stllm.data.loaders import data_root
from stllm.data.trajectories import Trajectories, load_humob_csv
from stllm.eval.mobility_metrics import GISCUP25, HUMOB24, dtw, dtw_batch, geobleu, geobleu_batch, score_users

VARIANT_KEYS = {"humob24": ("humob23_24", "humob23_24_code"), "giscup25": ("gis_cup_2025", "gis_cup_2025_code")}


def _ref_files() -> list:
    root = data_root() / "geobleu_reference"
    return sorted(root.glob("*.json")) if root.is_dir() else []


def _traj(rows, uid: int | None = 0) -> Trajectories:
    a = np.asarray(rows, dtype=np.int64)
    if uid is not None:
        a = np.column_stack([np.full(len(a), uid), a])
    return Trajectories(*a.T, base=1)


@pytest.fixture(scope="module", params=_ref_files() or [None], ids=lambda p: p.name if p else "missing")
def reference_cases(request):
    if request.param is None:
        pytest.skip(f"reference vectors not found under {data_root() / 'geobleu_reference'}")
    return json.loads(request.param.read_text())["cases"]


@pytest.mark.parametrize("variant", ["humob24", "giscup25"])
def test_every_reference_vector(reference_cases, variant):
    task_key, orig_key = VARIANT_KEYS[variant]
    checked = 0
    for case in reference_cases:
        if case["kind"] == "per_uid_task":
            gen, ref = _traj(case["generated_dtxy"]), _traj(case["reference_dtxy"])
            s = score_users(gen, ref, variant)
            want = case[task_key]
            assert s.geobleu[0] == pytest.approx(want["geobleu"], rel=1e-12, abs=1e-15), case["name"]
            assert s.dtw[0] == pytest.approx(want["dtw"], rel=1e-12, abs=1e-15), case["name"]
            # per day: the same batched cores on each day's cells
            days = sorted(want["per_day"], key=int)
            g = np.array(case["generated_dtxy"])
            r = np.array(case["reference_dtxy"])
            lens = [int((r[:, 0] == int(d)).sum()) for d in days]
            gb = geobleu_batch(g[:, 2:], r[:, 2:], lens, lens, variant)
            dt = dtw_batch(g[:, 2:], r[:, 2:], lens, lens, variant)
            np.testing.assert_allclose(gb, [want["per_day"][d]["geobleu"] for d in days], rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(dt, [want["per_day"][d]["dtw"] for d in days], rtol=1e-12, atol=1e-15)
        elif case["kind"].startswith("calc_geobleu_bulk"):
            gen, ref = _traj(case["generated_uid_dtxy"], None), _traj(case["reference_uid_dtxy"], None)
            s = score_users(gen, ref, variant)
            if variant == "giscup25":
                np.testing.assert_allclose(s.geobleu, [case["per_uid_2025"][str(u)] for u in s.uid], rtol=1e-12)
                assert s.mean()[0] == pytest.approx(case["gis_cup_2025"]["geobleu_mean_over_uids"], rel=1e-12)
            else:
                per = case["per_uid_humob23_24"]
                np.testing.assert_allclose(s.geobleu, [per[str(u)]["geobleu"] for u in s.uid], rtol=1e-12)
                np.testing.assert_allclose(s.dtw, [per[str(u)]["dtw"] for u in s.uid], rtol=1e-12)
        else:  # calc_geobleu_orig / calc_dtw_orig on plain (x, y) lists
            g, r, want = case["generated_xy"], case["reference_xy"], case[orig_key]
            assert geobleu(g, r, variant) == pytest.approx(want["geobleu"], rel=1e-12), case["name"]
            assert dtw(g, r, variant, scale=1) == pytest.approx(want["dtw_scale1"], rel=1e-12), case["name"]
            assert dtw(g, r, variant, scale=2) == pytest.approx(want["dtw_scale2"], rel=1e-12), case["name"]
        checked += 1
    assert checked == len(reference_cases) >= 9


def test_hand_worked_two_steps():
    # p1: greedy takes (g0,r0)=1 then (g1,r1)=e^-0.5*4=e^-2; p2: the one bigram pair 1*e^-2
    g, r = [(10, 10), (10, 12)], [(10, 10), (14, 12)]
    p1, p2 = (1 + math.exp(-2)) / 2, math.exp(-2)
    assert geobleu(g, r) == pytest.approx(math.sqrt(p1 * p2), rel=1e-14)
    # DTW: |g0-r0| = 0, then |g1-r1| = 4 cells; (g1, r0) costs 2 and (g0, r1) sqrt(20): the path is diagonal
    assert dtw(g, r, scale=1) == pytest.approx(4.0)


def test_greedy_ties_go_to_the_earlier_generated_then_reference_ngram():
    # g0 is 1 cell from r0 and from r1, g1 1 cell from r0: three exact ties. The reference code's stable sort
    # takes (g0, r0) first, leaving (g1, r1) at sqrt(5); an optimal assignment would take (g0, r1) + (g1, r0).
    g, r = [(1, 1), (3, 1)], [(2, 1), (1, 2)]
    p1 = (math.exp(-0.5) + math.exp(-0.5 * math.sqrt(5))) / 2
    p2 = math.exp(-0.5) * math.exp(-0.5 * math.sqrt(5))
    assert geobleu(g, r) == pytest.approx(math.sqrt(p1 * p2), rel=1e-14)


def test_variants_differ_where_the_definitions_do():
    # DTW: the 2023/24 code lets the path start anywhere along the reference (dtw[0, :] = 0)
    g, r = [(10, 10)] * 3, [(100, 100), (10, 10), (10, 10)]
    assert dtw(g, r, HUMOB24, scale=2) == 0.0
    assert dtw(g, r, GISCUP25, scale=2) == pytest.approx(90 * math.sqrt(2) / 2)
    # p_n over matched pairs (2023/24) vs over generated n-grams (2025); generated longer -> no brevity penalty
    g, r = [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)], [(1, 1), (2, 2), (3, 3)]
    assert geobleu(g, r, HUMOB24) == pytest.approx(1.0)
    assert geobleu(g, r, GISCUP25) == pytest.approx((3 / 5 * 2 / 4 * 1 / 3) ** (1 / 3))
    # constant 1-cell shift: every n-gram of length n has proximity e^{-n/2}; 2023/24 N=3, 2025 N=5
    g, r = [(50, 50)] * 10, [(51, 50)] * 10
    assert geobleu(g, r, HUMOB24) == pytest.approx(math.exp(-(0.5 + 1 + 1.5) / 3))
    assert geobleu(g, r, GISCUP25) == pytest.approx(math.exp(-(0.5 + 1 + 1.5 + 2 + 2.5) / 5))


def test_batch_of_mixed_lengths_equals_one_pair_at_a_time():
    rng = np.random.default_rng(0)
    glen, rlen = rng.integers(1, 9, 40), rng.integers(1, 9, 40)
    gxy, rxy = rng.integers(1, 12, (glen.sum(), 2)), rng.integers(1, 12, (rlen.sum(), 2))
    gcut, rcut = np.r_[0, np.cumsum(glen)], np.r_[0, np.cumsum(rlen)]
    for variant in ("humob24", "giscup25"):
        gb, dt = geobleu_batch(gxy, rxy, glen, rlen, variant), dtw_batch(gxy, rxy, glen, rlen, variant)
        for k in range(40):
            g, r = gxy[gcut[k]:gcut[k + 1]], rxy[rcut[k]:rcut[k + 1]]
            assert gb[k] == geobleu(g, r, variant)
            assert dt[k] == dtw(g, r, variant, scale=2)
        assert (gb > 0).all() and (gb <= 1).all() and (dt >= 0).all()


def test_misaligned_prediction_is_refused():
    ref = _traj([(60, 1, 5, 5), (60, 2, 5, 6), (61, 3, 7, 7)])
    gen = _traj([(60, 1, 5, 5), (60, 2, 5, 6), (61, 4, 7, 7)])
    with pytest.raises(ValueError, match=r"\(uid, d, t\).*generated \(0, 61, 4\), reference \(0, 61, 3\)"):
        score_users(gen, ref)
    with pytest.raises(ValueError, match="unknown metric variant"):
        score_users(ref, ref, "humob23")


# -- real data ---------------------------------------------------------------------------------------
MODELS = {"Llama3-8B-Mob": "pred_llama3_8b_mob_days60-74_cityBC.csv", "LP-BERT": "pred_lpbert_days60-74_cityBC.csv"}
PUBLISHED = {("Llama3-8B-Mob", "B"): (0.3541, 25.39), ("Llama3-8B-Mob", "C"): (0.2969, 20.57),
             ("LP-BERT", "B"): (0.3093, 23.30), ("LP-BERT", "C"): (0.2682, 23.82)}


@pytest.fixture(scope="module")
def humob():
    root = data_root() / "humob24"
    if not (root / "per_user_metrics_cityBC.csv").is_file():
        pytest.skip(f"HuMob data not found at {root}")
    gt = load_humob_csv(root / "groundtruth_days0-74_cityBC.csv", base=1)
    with (root / "per_user_metrics_cityBC.csv").open() as f:
        logged = list(csv.DictReader(f))
    return root, gt.subset(gt.d >= 60), logged


@pytest.mark.parametrize("model", list(MODELS))
def test_logged_per_user_values_of_the_published_models(humob, model):
    root, ref, logged = humob
    pred = load_humob_csv(root / MODELS[model], base=1)
    s24, s25 = score_users(pred, ref, "humob24"), score_users(pred, ref, "giscup25")
    rows = {int(r["uid"]): r for r in logged if r["model"] == model}
    assert sorted(rows) == s24.uid.tolist() and len(rows) == 200

    def col(name: str) -> np.ndarray:
        return np.array([float(rows[u][name]) for u in s24.uid])

    # GEO-BLEU: near-ties in the greedy matching follow exp()'s last bits -> abs 1e-3 (PROVENANCE); DTW exact
    np.testing.assert_allclose(s24.geobleu, col("geobleu_official_logged"), rtol=0, atol=1e-3)
    np.testing.assert_allclose(s24.dtw, col("dtw_official_logged"), rtol=1e-12)
    np.testing.assert_allclose(s25.geobleu, col("geobleu_2025_recomputed_numpy2"), rtol=0, atol=1e-3)
    np.testing.assert_allclose(s25.dtw, col("dtw_2025_recomputed"), rtol=1e-12)
    for city in "BC":
        users = np.unique(pred.uid[pred.city == city])
        mask = np.isin(s24.uid, users)
        gb, dt = PUBLISHED[model, city]
        assert mask.sum() == 100
        assert s24.geobleu[mask].mean() == pytest.approx(gb, abs=5e-5)  # published to 4 decimals
        assert s24.dtw[mask].mean() == pytest.approx(dt, abs=5e-3)  # to 2 decimals
