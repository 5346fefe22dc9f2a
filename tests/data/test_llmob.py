"""One LLMob reader for both tasks: the intent events and the activity chains read the same rows of the real file,
and a bad file is named with its field."""

import gzip

import pytest

from stllm.data.activity import load_llmob_chains
from stllm.data.intent import IntentDataError, load_llmob_csv
from stllm.data.llmob import LLMOB_FILE, read_llmob_rows
from stllm.data.loaders import data_root

REAL = data_root().joinpath(*LLMOB_FILE)


@pytest.mark.skipif(not REAL.is_file(), reason=f"{REAL} not present")
def test_intent_events_and_activity_chains_read_the_same_rows_of_the_real_file():
    rows = [rec for _, rec in read_llmob_rows(REAL, ("uid", "time"), "2019")]
    events = load_llmob_csv(REAL, "2019")
    chains = load_llmob_chains(REAL, "2019")
    n_steps = sum(len(c.steps) for part in chains.values() for c in part)
    assert len(rows) == len(events.user) == n_steps > 10_000
    assert {r["uid"] for r in rows} == set(events.user_ids.tolist()) == {c.user for p in chains.values() for c in p}


def test_bad_files_are_named_with_their_field(tmp_path):
    path = tmp_path / "chains.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("dataset,uid,date,time,place_category\n2021,1,2021-01-04,08:00:00,Office\n")
    with pytest.raises(IntentDataError, match=r"chains.csv.gz: missing column\(s\) top_category"):
        load_llmob_csv(path, "2021")
    with pytest.raises(IntentDataError, match=r"chains.csv.gz: field 'dataset': no rows of dataset '2019'"):
        list(read_llmob_rows(path, ("uid",), "2019", IntentDataError))
    with pytest.raises(FileNotFoundError, match="absent.csv: no such file"):
        list(read_llmob_rows(tmp_path / "absent.csv", ("uid",)))
