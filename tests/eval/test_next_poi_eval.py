"""stllm train-poi + stllm eval next-poi end to end on synthetic check-ins: table, files, refusals."""

import json
import math
import re
import shutil

import numpy as np
import pytest

from stllm.cli import main
from stllm.train.train_poi import resolve_checkins

SYNTH = {"synthetic_users": 12, "synthetic_pois": 40, "synthetic_days": 10}
METHODS = ["stllm", "most popular", "user most frequent", "nearest to last", "markov", "stllm generate (first 3)"]
KEYS = ["acc@1", "acc@5", "acc@10", "mrr", "ndcg@5", "ndcg@10"]
HEADER = "user_id,POI_id,POI_catname,latitude,longitude,local_time"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("poi") / "ckpt"
    argv = ["train-poi", "--output_dir", str(out), "--max_steps", "6", "--per_device_train_batch_size", "8",
            "--save_strategy", "no", "--disable_tqdm", "true", "--report_to", "none"]
    for k, v in SYNTH.items():
        argv += [f"--{k}", str(v)]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def split():
    """The synthetic (train, test) the checkpoint trained on and is evaluated against by default."""
    return resolve_checkins("synthetic", n_users=12, n_pois=40, days=10)


def write_csv(path, checkins, rows=None, user=None, poi=None):
    """``checkins`` (the given rows) as a Foursquare-style CSV; ``user``/``poi`` override ids by row."""
    c = checkins
    rows = range(len(c)) if rows is None else rows
    user, poi = user or {}, poi or {}
    lines = [HEADER]
    for i in rows:
        lines.append(",".join([user.get(i, str(c.user_ids[c.user[i]])), poi.get(i, str(c.poi_ids[c.poi[i]])),
                               str(c.categories[c.category[i]]), repr(float(c.lat[i])), repr(float(c.lon[i])),
                               str(c.time[i])]))
    path.write_text("\n".join(lines) + "\n")
    return path


def table_rows(section: str) -> dict[str, list[float]]:
    header, _, *lines = section.splitlines()
    assert header.split() == ["method", *KEYS, "n", "unknown"]
    out = {}
    for line in lines:
        name, values = re.match(r"^(.*?)\s{2,}(\S.*)$", line).groups()
        out[name] = [float(v) for v in values.split()]
    return out


def test_train_then_eval_end_to_end(checkpoint, tmp_path, capsys):
    record = json.loads((checkpoint / "poi_data.json").read_text())
    assert record["n_pois"] > 0 and len(record["poi_table_sha256"]) == 64
    capsys.readouterr()
    assert main(["eval", "next-poi", str(checkpoint), "--output_dir", str(tmp_path), "--no_progress",
                 "--max_samples", "60", "--generate", "3"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    sections = printed.split("\n\n")
    assert sections[0].startswith("all users (60 samples)\n")
    rows = table_rows(sections[0].split("\n", 1)[1])
    assert list(rows) == METHODS
    for name, values in rows.items():
        metrics = np.array(values[: len(KEYS)])
        assert np.isfinite(metrics).all() and ((metrics >= 0) & (metrics <= 1)).all(), name
        acc = metrics[:3]
        assert (np.diff(acc) >= 0).all(), name  # acc@1 <= acc@5 <= acc@10
        assert values[len(KEYS)] == (3 if "generate" in name else 60), name
    gen = rows["stllm generate (first 3)"]
    assert gen[0] == gen[1] == gen[2]  # one text answer: Acc@k = Acc@1
    assert "did not parse" in printed and "missing from the training table" in printed

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {"all users", "seen users"}  # every synthetic test user trained; no empty group
    assert list(metrics["all users"]) == METHODS and list(metrics["seen users"]) == METHODS[:-1]
    assert metrics["seen users"]["stllm"]["n"] == 60
    for name in METHODS:
        for k, v in zip(KEYS, rows[name]):
            assert metrics["all users"][name][k] == pytest.approx(v, abs=6e-5), (name, k)
    assert 0 <= metrics["all users"]["stllm generate (first 3)"]["unparsed"] <= 3

    assert (tmp_path / "acc_at_k.png").stat().st_size > 10_000  # the Acc@k curves
    lines = (tmp_path / "predictions.jsonl").read_text().splitlines()
    preds = [json.loads(x) for x in lines]
    assert len(preds) == 60 and len(set(lines)) == 60
    assert len({(p["user"], p["time"]) for p in preds}) == 60
    ranks = np.array([math.inf if p["rank"] is None else p["rank"] for p in preds])
    assert ((ranks >= 0) & (ranks < record["n_pois"]) | np.isinf(ranks)).all()
    assert (ranks < 1).mean() == pytest.approx(metrics["all users"]["stllm"]["acc@1"])
    assert (ranks < 10).mean() == pytest.approx(metrics["all users"]["stllm"]["acc@10"])
    assert sum(p["seen_user"] for p in preds) == metrics["seen users"]["stllm"]["n"]


def eval_all_users(checkpoint, out, *extra):
    assert main(["eval", "next-poi", str(checkpoint), "--output_dir", str(out), "--no_progress",
                 "--max_samples", "20", *extra]) == 0  # fmt: skip
    return json.loads((out / "metrics.json").read_text())["all users"]


def assert_same_metrics(a, b):
    assert list(a) == list(b)
    for name in a:
        for k in KEYS:
            assert b[name][k] == pytest.approx(a[name][k], abs=1e-6), (name, k)


def test_test_part_as_csv_gives_the_same_result(checkpoint, split, tmp_path):
    """--test as a CSV file holding the synthetic test part: the same samples, identical numbers."""
    _, test = split
    te = write_csv(tmp_path / "test.csv", test)
    assert_same_metrics(eval_all_users(checkpoint, tmp_path / "default"),
                        eval_all_users(checkpoint, tmp_path / "csv", "--test", str(te)))


def test_unknown_pois_and_unseen_users_are_reported(checkpoint, split, tmp_path, capsys):
    """A test CSV with a new user and POIs outside the training table: unknown targets are misses for every
    method, the new user's samples form the unseen group."""
    _, test = split
    first_user = np.flatnonzero(test.user == test.user[0])
    new_user = {int(i): "newcomer" for i in first_user}
    other = np.flatnonzero(test.user != test.user[0])
    new_poi = {int(i): "p_new" for i in other[5:40:4]}  # never a user's first test row: they are targets
    csv = write_csv(tmp_path / "test.csv", test, user=new_user, poi=new_poi)
    out = tmp_path / "o"
    capsys.readouterr()
    argv = ["eval", "next-poi", str(checkpoint), "--output_dir", str(out), "--no_progress", "--test", str(csv)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    n_all = metrics["all users"]["stllm"]["n"]
    assert metrics["unseen users"]["stllm"]["n"] == len(first_user) - 1  # all but the newcomer's first check-in
    assert metrics["seen users"]["stllm"]["n"] == n_all - len(first_user) + 1
    train, _ = split
    known = set(train.poi_ids.tolist())
    targets = np.setdiff1d(np.arange(len(test)), first_user[:1])  # every row but the newcomer's first
    n_unknown = sum(int(r) in new_poi or test.poi_ids[test.poi[r]] not in known for r in targets)
    assert n_unknown >= len(new_poi)
    for name, m in metrics["all users"].items():
        assert m["n_unknown"] == n_unknown, name
        assert m["acc@10"] <= 1 - n_unknown / n_all + 1e-9, name
    assert f"{n_unknown} of {n_all} test targets are POIs missing from the training table" in printed
    assert f"unseen users ({len(first_user) - 1} samples)" in printed
    assert "1 test check-ins are not targets" in printed  # the newcomer's first check-in
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == n_all
    unknown = [p for p in preds if p["rank"] is None]
    assert len(unknown) == n_unknown and all(p["target"] is None for p in preds if p["rank"] is None)
    assert sum(not p["seen_user"] for p in preds) == len(first_user) - 1
    unseen_names = {p["user"] for p in preds if not p["seen_user"]}
    assert len(unseen_names) == 1 and not unseen_names & {p["user"] for p in preds if p["seen_user"]}


def test_training_part_as_csv_is_accepted(checkpoint, split, tmp_path):
    train, test = split
    tr, te = write_csv(tmp_path / "train.csv", train), write_csv(tmp_path / "test.csv", test)
    assert_same_metrics(eval_all_users(checkpoint, tmp_path / "default"),
                        eval_all_users(checkpoint, tmp_path / "csv", "--train", str(tr), "--test", str(te)))


def test_refuses_another_poi_table(checkpoint, tmp_path, capsys):
    csv = tmp_path / "other.csv"
    csv.write_text("\n".join([HEADER, "1,pA,Cafe,40.70,-74.00,2012-11-09 09:00:00", "1,pB,Bar,40.75,-73.99,"
                              "2012-11-09 10:00:00", "2,pA,Cafe,40.70,-74.00,2012-11-09 11:00:00"]) + "\n")
    capsys.readouterr()
    assert main(["eval", "next-poi", str(checkpoint), "--output_dir", str(tmp_path / "o"), "--no_progress",
                 "--train", str(csv), "--test", str(csv)]) == 2  # fmt: skip
    out = capsys.readouterr().err
    assert "different POI table" in out and "other.csv" in out
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_refuses_a_checkpoint_without_poi_data(checkpoint, tmp_path, capsys):
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("config.json", "tokenizer_config.json"):
        shutil.copy(checkpoint / name, partial / name)
    capsys.readouterr()
    assert main(["eval", "next-poi", str(partial), "--no_progress"]) == 2
    out = capsys.readouterr().err
    assert "missing poi_data.json" in out and str(partial) in out
    assert main(["eval", "next-poi", str(tmp_path / "nowhere"), "--no_progress"]) == 2
    assert "checkpoint directory not found" in capsys.readouterr().err


def test_refuses_test_check_ins_earlier_than_training(checkpoint, split, tmp_path, capsys):
    train, _ = split
    early = np.flatnonzero(train.time < train.time.min() + np.timedelta64(2, "D"))
    csv = write_csv(tmp_path / "early.csv", train, early)
    argv = ["eval", "next-poi", str(checkpoint), "--output_dir", str(tmp_path / "o"), "--no_progress",
            "--test", str(csv), "--max_samples", "10"]
    capsys.readouterr()
    assert main(argv) == 2
    out = capsys.readouterr().err
    assert f"{len(early)} test check-ins are earlier than the last training check-in" in out
    assert "--allow-overlap" in out and not (tmp_path / "o").exists()
    assert main([*argv, "--allow-overlap"]) == 0
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["all users"]["stllm"]["n"] == 10


def test_lora_on_a_pretrained_backbone_trains_the_poi_head_and_reloads(tmp_path, capsys):
    """--model_name_or_path (LoRA by default): the candidate head trains through modules_to_save, the backbone
    stays as saved, and the LoRA checkpoint reloads for evaluation."""
    import torch
    from model_fixtures import save_checkin_llama
    from transformers import AutoModelForCausalLM

    from stllm import STLlamaForCausalLM

    save_checkin_llama(tmp_path / "llama")
    out = tmp_path / "lora"
    argv = ["train-poi", "--model_name_or_path", str(tmp_path / "llama"), "--output_dir", str(out), "--max_steps", "4",
            "--per_device_train_batch_size", "8", "--save_strategy", "no", "--disable_tqdm", "true",
            "--report_to", "none", *[x for k, v in SYNTH.items() for x in (f"--{k}", str(v))]]
    assert main(argv) == 0
    from safetensors.torch import load_file

    saved = load_file(out / "adapter_model.safetensors")
    head = {k: v for k, v in saved.items() if "poi_head.query.weight" in k}
    assert len(head) == 1  # the candidate head is saved with the adapter (modules_to_save)
    model = STLlamaForCausalLM.from_pretrained(out)
    torch.testing.assert_close(model.poi_head.query.weight, next(iter(head.values())))  # and reloaded
    original = AutoModelForCausalLM.from_pretrained(tmp_path / "llama")
    w = "model.layers.0.mlp.down_proj.weight"  # not a LoRA target: must be the saved backbone's
    assert torch.equal(model.backbone.state_dict()[w], original.state_dict()[w])
    capsys.readouterr()
    assert main(["eval", "next-poi", str(out), "--no_progress", "--max_samples", "30"]) == 0
    assert "stllm " in capsys.readouterr().out
