"""Intent data: the log type and loaders (bad input named by file/line/field), the population/held-out and
later-day split with the leak check evaluation runs, leave-one-out transition features, prompts, the collator."""

import gzip

import numpy as np
import pytest

from stllm.data.intent import (
    INTENT_FEATURES,
    INTENTS,
    PARTS,
    IntentCollator,
    IntentDataError,
    IntentDataset,
    IntentSplit,
    TransitionTables,
    build_event_log,
    check_heldout,
    check_heldout_share,
    check_validation,
    describe_events,
    load_llmob_csv,
    make_split,
    prepare_intent,
    sample_parts,
    synthetic_events,
    target_rows,
    validation_data,
    validation_split,
    with_heldout_share,
)
from stllm.data.loaders import data_root
from stllm.data.tokenizer import train_tokenizer
from stllm.tokens import INTENT_PRE_TOKEN, add_intent_token

FOOD, SHOP, TRAVEL = INTENTS.index("Food"), INTENTS.index("Shop & Service"), INTENTS.index("Travel & Transport")
HEADER = "dataset,uid,split,date,seq,place_category,place_id,time,top_category,coarse_activity\n"


def _log():
    """Two users; user a: Food -> Shop -> Food on day 1, Food -> Travel on day 2 (times out of order in input)."""
    t = lambda s: np.datetime64(s, "m")  # noqa: E731
    return build_event_log(
        ["a", "a", "a", "b", "a", "a", "b"],
        [t("2024-01-01T08:00"), t("2024-01-01T09:00"), t("2024-01-01T12:00"), t("2024-01-01T10:00"),
         t("2024-01-02T08:00"), t("2024-01-02T07:00"), t("2024-01-01T11:00")],
        ["Cafe", "Mall", "Cafe", "Station", "Station", "Cafe", "Cafe"],
        ["Food", "Shop & Service", "Food", "Travel & Transport", "Travel & Transport", "Food", "Food"],
    )


def test_build_sorts_by_user_and_time_and_names_bad_intent():
    log = _log()
    assert log.user_ids.tolist() == ["a", "b"]
    assert log.user.tolist() == [0, 0, 0, 0, 0, 1, 1]
    assert log.intent.tolist() == [FOOD, SHOP, FOOD, FOOD, TRAVEL, TRAVEL, FOOD]
    assert log.minute.tolist()[:4] == [480, 540, 720, 420]
    assert log.weekday[0] == 0  # 2024-01-01 is a Monday
    with pytest.raises(IntentDataError, match="field 'intent'.*Sleeping"):
        build_event_log(["a"], np.array(["2024-01-01T00:00"], dtype="datetime64[m]"), ["Bed"], ["Sleeping"])


def test_target_rows_need_same_user_history():
    log = _log()
    assert target_rows(log).tolist() == [1, 2, 3, 4, 6]
    assert target_rows(log, min_history=3).tolist() == [3, 4]


def _write_llmob(tmp_path, body: str, name: str = "chains.csv.gz"):
    path = tmp_path / name
    with gzip.open(path, "wt") as fh:
        fh.write(body)
    return path


def test_llmob_loader_maps_event_and_names_bad_rows(tmp_path):
    path = _write_llmob(tmp_path, HEADER + "2019,7,train,2019-01-02,0,Concert Hall,1,0:00:00,Event,x\n"
                        "2019,7,train,2019-01-02,1,Park,2,10:50:00,Outdoors & Recreation,outdoors\n"
                        "2021,8,train,2021-01-02,0,Park,2,10:50:00,Outdoors & Recreation,outdoors\n")
    log = load_llmob_csv(path)
    assert len(log) == 2 and log.user_ids.tolist() == ["7"]
    assert [INTENTS[i] for i in log.intent] == ["Arts & Entertainment", "Outdoors & Recreation"]
    assert log.minute.tolist() == [0, 650]
    bad = _write_llmob(tmp_path, HEADER + "2019,7,train,2019-01-02,0,Park,2,25:99:00,Food,x\n")
    with pytest.raises(IntentDataError, match=r"chains.csv.gz: line 2: field 'date'/'time'"):
        load_llmob_csv(bad)
    bad = _write_llmob(tmp_path, HEADER + "2019,7,train,2019-01-02,0,Park,2,10:00:00,Sleep,x\n")
    with pytest.raises(IntentDataError, match=r"line 2: field 'top_category': unknown 'Sleep'"):
        load_llmob_csv(bad)
    bad = _write_llmob(tmp_path, "dataset,uid,date\n2019,1,2019-01-01\n", name="short.csv.gz")
    with pytest.raises(IntentDataError, match="missing column.*time"):
        load_llmob_csv(bad)
    with pytest.raises(IntentDataError, match="field 'dataset'"):
        load_llmob_csv(path, dataset="2020")


def test_split_holds_out_users_and_later_days():
    log = synthetic_events(seed=1, n_users=10, days=20)
    split = make_split(log, heldout_frac=0.3, test_frac=0.25, seed=0)
    assert len(split.heldout_users) == 3 and not set(split.heldout_users) & set(split.population_users)
    for u in range(10):
        days = np.unique(log.day[log.user == u])
        assert split.cutoff[log.user_ids[u]] == days[15]  # the last 5 of 20 active days are test days
    rows = target_rows(log)
    part = sample_parts(log, rows, split)
    held = np.isin(log.user_ids[log.user[rows]], split.heldout_users)
    assert set(part[held].tolist()) == {2, 3} and set(part[~held].tolist()) == {0, 1}
    check_heldout(log, rows[part == 3], split)  # the held-out users' later days: accepted
    with pytest.raises(IntentDataError, match="not held out.*user_train"):
        check_heldout(log, rows[part >= 2], split)
    with pytest.raises(IntentDataError, match="population_test"):
        check_heldout(log, rows[(part == 3) | (part == 1)], split)
    check_heldout(log, rows[(part == 3) | (part == 1)], split, allow_population=True)
    leaked = IntentSplit(split.population_users, split.heldout_users + split.population_users[:1], split.cutoff)
    with pytest.raises(IntentDataError, match="leaked split"):
        check_heldout(log, rows[part == 3], leaked)
    round_trip = IntentSplit.from_dict(__import__("json").loads(split.to_json()))
    assert round_trip == split


def test_heldout_share_moves_only_heldout_cutoffs_and_is_checked():
    log = synthetic_events(seed=1, n_users=10, days=20)
    split = make_split(log, heldout_frac=0.3, test_frac=0.25, seed=0)
    wide = make_split(log, heldout_frac=0.3, test_frac=0.25, seed=0, heldout_test_frac=0.5)
    assert wide == with_heldout_share(log, split, 0.5) and wide.heldout_share == 0.5
    assert wide.heldout_users == split.heldout_users
    for u in range(10):
        name, days = log.user_ids[u], np.unique(log.day[log.user == u])
        # held-out users: the last 10 of 20 active days; population users keep the last 5
        assert wide.cutoff[name] == days[10 if name in split.heldout_users else 15]
    data = prepare_intent(log, split=wide)
    check_heldout(log, data.rows_of("user_test"), wide)
    assert IntentSplit.from_dict(__import__("json").loads(wide.to_json())) == wide
    u = wide.heldout_users[0]
    days = np.unique(log.day[log.user_ids[log.user] == u])
    tampered = IntentSplit(wide.population_users, wide.heldout_users, {**wide.cutoff, u: int(days[12])},
                           heldout_share=0.5)
    with pytest.raises(IntentDataError, match=f"field 'cutoff': user {u} holds out 8 of 20.*gives 10"):
        check_heldout_share(log, tampered)
    with pytest.raises(IntentDataError, match="field 'cutoff'"):
        prepare_intent(log, split=tampered)
    with pytest.raises(IntentDataError, match="field 'heldout_share'"):
        with_heldout_share(log, split, 1.0)


def test_transition_features_leave_own_target_out():
    log = _log()
    split = IntentSplit(("a",), ("b",), {"a": int(log.day[4]), "b": int(log.day[6])})
    rows = target_rows(log)
    tables = TransitionTables.fit(log, rows, split)
    # population-train targets: user a's day-1 rows 1, 2 (Food -> Shop, Shop -> Food); day 2 is a test day
    assert tables.pop_intent[FOOD, SHOP] == 1 and tables.pop_intent[SHOP, FOOD] == 1
    assert tables.pop_intent.sum() == 2 and tables.user_intent[1].sum() == 0
    f = tables.features(log, rows, split)
    assert f.shape == (5, len(INTENTS), len(INTENT_FEATURES))
    pop = INTENT_FEATURES.index("log_pop_intent")
    # target row 1 (Food -> Shop) sees the population's Food row without itself: nothing is left, all equal
    assert np.allclose(f[0, :, pop], f[0, 0, pop])
    # target row 3 (day 2, Food -> Food) is a test target: it sees Food -> Shop (smoothing 0.5)
    assert f[2, :, pop].argmax() == SHOP and np.isclose(f[2, SHOP, pop] - f[2, FOOD, pop], np.log(1.5 / 0.5))
    user = INTENT_FEATURES.index("log_user_intent")
    assert np.allclose(f[0, :, user], f[0, 0, user]) and f[2, :, user].argmax() == SHOP
    assert f[0, :, INTENT_FEATURES.index("is_last")].tolist() == np.eye(len(INTENTS))[FOOD].tolist()


def test_prompt_holds_only_the_users_earlier_events():
    log = _log()
    texts = describe_events(log, np.array([4, 6]), history=2)
    assert texts[0] == "Recent events: Mon 12:00 Cafe; Tue 07:00 Cafe. Next intent:"
    assert texts[1] == "Recent events: Mon 10:00 Station. Next intent:"


def test_synthetic_users_have_their_own_habits():
    """The long-tail habits make a user's own transitions beat the population's on their later days."""
    log = synthetic_events(seed=0, n_users=12, days=28)
    split = make_split(log, seed=0)
    rows = target_rows(log)
    tables = TransitionTables.fit(log, rows, split)
    test = rows[sample_parts(log, rows, split) % 2 == 1]
    u, last, y = log.user[test], log.intent[test - 1], log.intent[test]
    own = (tables.user_intent[u, last].argmax(-1) == y).mean()
    pop = (tables.pop_intent[last].argmax(-1) == y).mean()
    assert own > pop + 0.05


def test_collator_one_slot_per_row():
    log = synthetic_events(seed=2, n_users=4, days=10)
    split = make_split(log)
    rows = target_rows(log)[:6]
    ds = IntentDataset(log, rows, split, TransitionTables.fit(log, target_rows(log), split), history=3)
    tok = train_tokenizer(ds.texts, vocab_size=300)
    with pytest.raises(ValueError, match="lacks <intent_pre>"):
        IntentCollator(tok)
    add_intent_token(tok)
    batch = IntentCollator(tok)([ds[i] for i in range(6)])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    tid = tok.convert_tokens_to_ids(INTENT_PRE_TOKEN)
    assert ((ids == tid).sum(1) == 1).all()
    last = mask.sum(1) - 1  # right padding: the slot is each row's last real token
    assert (ids[np.arange(6), last] == tid).all()
    assert batch["intent_features"].shape == (6, len(INTENTS), len(INTENT_FEATURES))
    assert batch["intent_targets"].tolist() == log.intent[rows].tolist()


@pytest.mark.skipif(not (data_root() / "llmob_tokyo").is_dir(), reason="../shared/data/llmob_tokyo absent")
def test_real_tokyo_counts():
    log = load_llmob_csv(data_root() / "llmob_tokyo" / "llmob_activity_chains.csv.gz")
    assert len(log) == 59508 and len(np.unique(log.user)) == 93
    assert np.bincount(log.intent, minlength=9).min() > 0  # all nine intents occur


def test_nyc_loader_maps_through_tokyo_pairs_then_extra_and_drops_the_rest(tmp_path):
    header = ("user_id,POI_id,POI_catid,POI_catid_code,POI_catname,latitude,longitude,timezone,UTC_time,local_time,"
              "day_of_week,norm_in_day_time,trajectory_id,norm_day_shift,norm_relative_time\n")
    row = "{u},p{i},c,1,{cat},40.7,-74.0,-300,x,2012-11-09 {h}:00:00+00:00,4,0.5,{u}_1,0,0.5\n"
    body = "".join(row.format(u=u, i=i, cat=cat, h=10 + i) for i, (u, cat) in enumerate(
        [("1", "Park"), ("1", "Subway"), ("1", "Unknown Thing"), ("2", "Home (private)")]))
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text(header + body)
    b.write_text(header + body)  # overlapping files: the same check-ins count once
    from stllm.data.intent import load_nyc_events

    log, dropped = load_nyc_events([a, b], {"Park": "Outdoors & Recreation"})
    assert dropped == 1 and len(log) == 3
    assert [INTENTS[i] for i in log.intent] == ["Outdoors & Recreation", "Travel & Transport", "Residence"]


def test_missing_events_file_named(tmp_path):
    from stllm.data.intent import resolve_events

    with pytest.raises(FileNotFoundError, match="nope.csv: no such file"):
        resolve_events(str(tmp_path / "nope.csv"))


def test_named_sources_read_from_the_given_data_root(tmp_path):
    from stllm.data.intent import resolve_events

    (tmp_path / "llmob_tokyo").mkdir()
    _write_llmob(tmp_path / "llmob_tokyo", HEADER + "2019,9,train,2019-01-02,0,Park,2,10:50:00,Food,x\n",
                 name="llmob_activity_chains.csv.gz")
    log = resolve_events("tokyo", root=tmp_path)
    assert log.user_ids.tolist() == ["9"] and str(tmp_path) in log.source


def test_validation_days_are_the_end_of_heldout_users_earlier_days_never_test_days():
    log = synthetic_events(seed=1, n_users=10, days=20)
    data = prepare_intent(log, heldout_frac=0.3, test_frac=0.25, seed=0)
    val = validation_data(data, val_frac=0.2)
    for u in data.split.heldout_users:
        i = int(np.flatnonzero(log.user_ids == u)[0])
        days = np.unique(log.day[log.user == i])
        # 15 training days (20 - 5 test days); the last round(0.2 * 15) = 3 of them validate
        assert val.split.cutoff[u] == days[12] and data.split.cutoff[u] == days[15]
    v = val.rows_of("user_test")
    assert len(v) and (sample_parts(log, v, data.split) == PARTS.index("user_train")).all()
    assert not np.isin(v, data.rows_of("user_test")).any()
    assert val.split.population_users == data.split.population_users
    assert np.array_equal(val.tables.pop_intent, data.tables.pop_intent)
    # user tables count only the days before validation: fewer targets than the real split's
    held = np.isin(log.user_ids, data.split.heldout_users)
    assert val.tables.user_freq[held].sum() == len(val.rows_of("user_train"))
    assert val.tables.user_freq[held].sum() < data.tables.user_freq[held].sum()
    with pytest.raises(IntentDataError, match="validation target.*user_test.*refusing"):
        check_validation(log, data.rows_of("user_train", "user_test"), data.split)


def test_validation_drops_users_with_one_training_day():
    log = _log()
    split = IntentSplit(("b",), ("a",), {"a": int(log.day[4]), "b": int(log.day[6])})  # a: one training day
    with pytest.raises(IntentDataError, match="field 'heldout_users'.*2\\+ training days"):
        validation_split(log, split)
    with pytest.raises(IntentDataError, match="val_frac"):
        validation_split(log, split, val_frac=1.0)

