"""Next-POI samples (train and eval tasks), the dataset's prompts and the collator's batches."""

import re

import numpy as np
import pytest
import torch

from stllm.data import train_tokenizer
from stllm.data.checkins import build_checkins, merge_checkins, synthetic_checkins
from stllm.data.next_poi import (
    NextPOICollator,
    NextPOIDataset,
    category_token_ids,
    next_poi_eval_task,
    next_poi_train_task,
)
from stllm.data.prompts import ChatFormatter
from stllm.eval.poi_baselines import MarkovTransition
from stllm.tokens import add_st_tokens

T0 = np.datetime64("2013-01-01T08:00", "m")
LOC = {"A": (40.70, -74.00), "B": (40.75, -73.99), "C": (40.80, -73.95), "D": (40.72, -73.97)}
PROMPT_VISITS = 3


def make(visits, start):
    """visits: (user, poi) in time order, one hour apart from ``start``."""
    users = [u for u, _ in visits]
    pois = [p for _, p in visits]
    return build_checkins(users, pois, [f"cat {p}" for p in pois], [LOC[p][0] for p in pois],
                          [LOC[p][1] for p in pois], start + np.arange(len(visits)).astype("timedelta64[h]"), users)


# -- the evaluation task -------------------------------------------------------------------------------------------


def test_eval_task_history_reaches_into_training_and_targets_are_test_rows():
    train = make([("u1", "A"), ("u1", "B"), ("u1", "C"), ("u2", "A"), ("u2", "B")], T0)
    # later: u1 goes to D (not in the training table), then A; u3 is new (its first check-in is no target)
    test = make([("u1", "D"), ("u1", "A"), ("u3", "B"), ("u3", "C")], T0 + np.timedelta64(30, "D"))
    task = next_poi_eval_task(train, test, history=4)
    c = task.checkins
    _, is_test = merge_checkins(train, test)
    assert len(task) == 3 and is_test[task.rows].all()
    assert [str(c.user_ids[c.user[r]]) for r in task.rows] == ["u1", "u1", "u3"]
    assert task.seen_user.tolist() == [True, True, False]
    names = np.append(train.poi_ids, "?")  # index -1 -> "?"
    assert names[task.target].tolist() == ["?", "A", "C"]  # D is unknown to the training table
    hist = [names[c.poi[h[h >= 0]]].tolist() for h in task.hist]
    assert hist == [["A", "B", "C"], ["A", "B", "C", "?"], ["B"]]
    assert not is_test[task.hist[0][task.hist[0] >= 0]].any()  # u1's first test target: all history from training
    assert (task.hist[2, :-1] == -1).all()  # right-aligned, left-padded
    sub = task.subset([2])
    assert len(sub) == 1 and sub.seen_user.tolist() == [False] and sub.target.tolist() == [2]


def test_eval_task_keeps_the_names_of_new_users_and_categories():
    t = np.datetime64("2013-01-01T08:00", "m")
    train = build_checkins(["1", "2"], ["pA", "pB"], ["Bar", "Gym"], [40.70, 40.71], [-74.0, -74.01], [t, t],
                           ["a", "b"])
    test = build_checkins(["10000", "10000"], ["pA", "pB"], ["Convenience Store", "Gym"], [40.70, 40.71],
                          [-74.0, -74.01], [t + 60, t + 120], ["c", "c"])
    task = next_poi_eval_task(train, test)
    c = task.checkins
    assert len(task) == 1 and task.seen_user.tolist() == [False]
    assert c.user_ids[c.user[task.rows[0]]] == "10000"  # not "1", a training user's id
    assert "Convenience Store" in c.categories.tolist()


def test_train_task_every_visit_after_the_first_is_a_target():
    train = make([("u1", "A"), ("u1", "B"), ("u1", "C"), ("u2", "A"), ("u2", "B"), ("u3", "D")], T0)
    task = next_poi_train_task(train, history=2)
    assert len(task) == 3 and task.seen_user.all()  # u1: B, C; u2: B; u3 has one check-in
    assert train.poi_ids[task.target].tolist() == ["B", "C", "B"]
    assert task.hist.shape == (3, 2) and task.hist[0, 0] == -1 and (task.hist[1] >= 0).all()


# -- dataset and collator ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkins():
    return synthetic_checkins(seed=1, n_users=4, n_pois=25, days=4)


@pytest.fixture(scope="module")
def poi_dataset(checkins):
    return NextPOIDataset(next_poi_train_task(checkins, history=6), prompt_visits=PROMPT_VISITS)


@pytest.fixture(scope="module")
def tok(poi_dataset, checkins):
    fmt = ChatFormatter(None)
    texts = ["\n".join(fmt(poi_dataset[i]["conversation"])) for i in range(len(poi_dataset))]
    tok = train_tokenizer(texts + checkins.categories.tolist(), vocab_size=600)
    add_st_tokens(tok)
    return tok


def ids_of(tok, name):
    return tok.convert_tokens_to_ids(name)


@pytest.fixture(scope="module")
def picks(poi_dataset):
    """Samples with 1, 2, PROMPT_VISITS and more earlier visits (first samples of a user have fewer)."""
    n_hist = (poi_dataset.task.hist >= 0).sum(axis=1)
    out = [int(np.flatnonzero(n_hist == k)[0]) for k in (1, 2, PROMPT_VISITS)]
    return out + [int(np.flatnonzero(n_hist > PROMPT_VISITS)[-1])]


def test_geo_and_poi_pre_tokens_per_row(tok, poi_dataset, checkins, picks):
    samples = [poi_dataset[i] for i in picks]
    b = NextPOICollator(tok, checkins)(samples)
    n_hist = (poi_dataset.task.hist[picks] >= 0).sum(axis=1)
    shown = np.minimum(PROMPT_VISITS, n_hist)
    assert shown.tolist() == [1, 2, 3, 3]
    assert (b["input_ids"] == ids_of(tok, "<geo>")).sum(dim=1).tolist() == shown.tolist()
    assert (b["input_ids"] == ids_of(tok, "<poi_pre>")).sum(dim=1).tolist() == [1] * len(picks)
    assert b["geo_coords"].shape == (int(shown.sum()), 2)
    # the <geo> slots carry the shown visits' coordinates, oldest first; never the target's
    c, t = checkins, poi_dataset.task
    want = np.concatenate([np.stack([c.lat[h[h >= 0][-k:]], c.lon[h[h >= 0][-k:]]], -1)
                           for h, k in zip(t.hist[picks], shown)])
    np.testing.assert_allclose(b["geo_coords"].numpy(), want, rtol=1e-6)
    assert b["poi_targets"].tolist() == c.poi[t.rows[picks]].tolist()
    np.testing.assert_allclose(b["poi_anchor"].numpy(), np.stack([c.lat[t.hist[picks, -1]], c.lon[t.hist[picks, -1]]],
                                                                  -1), rtol=1e-6)
    assert b["poi_coords"].shape == (c.n_pois, 2) and b["poi_category"].shape == (c.n_pois,)
    assert b["poi_category_tokens"].shape[0] == len(c.categories)


def test_prefix_answer_ends_at_poi_pre_without_labels(tok, poi_dataset, checkins, picks):
    b = NextPOICollator(tok, checkins, answer="prefix")([poi_dataset[i] for i in picks])
    assert "labels" not in b
    last = b["attention_mask"].sum(dim=1) - 1  # right padding: last real token
    assert b["input_ids"][torch.arange(len(picks)), last].tolist() == [ids_of(tok, "<poi_pre>")] * len(picks)
    assert (b["input_ids"][b["attention_mask"] == 0] == tok.pad_token_id).all()
    left = NextPOICollator(tok, checkins, answer="prefix", padding_side="left")([poi_dataset[i] for i in picks])
    assert (left["input_ids"][:, -1] == ids_of(tok, "<poi_pre>")).all()


def test_full_answer_labels_cover_only_the_answer(tok, poi_dataset, checkins, picks):
    col = NextPOICollator(tok, checkins)
    samples = [poi_dataset[i] for i in picks]
    b = col(samples)
    for i, s in enumerate(samples):
        prompt, answer = col.texts(s)
        labelled = b["labels"][i] != -100
        n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
        assert not labelled[:n_prompt].any()
        assert tok.decode(b["labels"][i][labelled]) == answer
        assert labelled.sum() == b["attention_mask"][i].sum() - n_prompt  # every answer token, no padding
        assert (b["labels"][i][labelled] == b["input_ids"][i][labelled]).all()
        assert f"POI {s['poi_target']}" in answer


def test_prompt_never_names_the_target(tok, poi_dataset, checkins):
    col = NextPOICollator(tok, checkins, answer="prefix")
    idx = list(range(0, len(poi_dataset), 5))
    b = col([poi_dataset[i] for i in idx])
    for row, i in enumerate(idx):
        text = tok.decode(b["input_ids"][row][b["attention_mask"][row] == 1])
        assert text.endswith("<poi_pre>")
        assert f"POI {poi_dataset[i]['poi_target']}" not in text
        assert re.search(r"POI\s+\d", text) is None  # no POI index of any kind before the answer


def test_poi_history_is_right_aligned(tok, poi_dataset, checkins, picks):
    samples = [dict(poi_dataset[i]) for i in picks]
    samples[0]["poi_history"] = samples[0]["poi_history"][-2:]  # shorter windows get left-padded
    b = NextPOICollator(tok, checkins)(samples)
    h = b["poi_history"]
    assert h.shape == (len(picks), poi_dataset.task.hist.shape[1])
    assert h[0, :-2].eq(-1).all() and h[0, -2:].tolist() == samples[0]["poi_history"].tolist()
    c, t = checkins, poi_dataset.task
    assert h[:, -1].tolist() == c.poi[t.hist[picks, -1]].tolist()  # the last column is the last visit
    for row in h.tolist():  # padding only on the left
        valid = np.array(row) >= 0
        assert valid[np.argmax(valid):].all()


def test_leave_one_out_subtracts_exactly_the_own_transition(tok, poi_dataset, checkins):
    markov = MarkovTransition().fit(checkins)
    idx = list(range(0, len(poi_dataset), 3))
    samples = [poi_dataset[i] for i in idx]
    full = NextPOICollator(tok, checkins, transitions=markov)(samples)
    loo = NextPOICollator(tok, checkins, transitions=markov, leave_one_out=True)(samples)
    assert "poi_transition" not in NextPOICollator(tok, checkins)(samples)
    diff = full["poi_transition"] - loo["poi_transition"]
    assert diff.shape == (len(idx), checkins.n_pois)
    want = torch.zeros_like(diff)
    want[torch.arange(len(idx)), full["poi_targets"]] = 1.0
    torch.testing.assert_close(diff, want)
    assert (loo["poi_transition"] >= 0).all()


def test_category_token_ids_pads_with_minus_one(tok):
    t = category_token_ids(tok, ["Coffee Shop", "Gym", ""])
    assert t.shape[0] == 3 and t.dtype == torch.long
    assert tok.decode(t[0][t[0] >= 0]) == "Coffee Shop" and tok.decode(t[1][t[1] >= 0]) == "Gym"
    assert (t[2] == -1).all() and (t[1] == -1).any()


def test_collator_and_dataset_refusals(tok, poi_dataset, checkins):
    with pytest.raises(ValueError, match="answer must be 'full' or 'prefix'"):
        NextPOICollator(tok, checkins, answer="none")
    with pytest.raises(ValueError, match="prompt_visits must be >= 1"):
        NextPOIDataset(poi_dataset.task, prompt_visits=0)
    bad = dict(poi_dataset[0], geo=np.zeros((5, 2)))
    with pytest.raises(ValueError, match="<GEO> in the prompt for 5 visits"):
        NextPOICollator(tok, checkins)([bad])
