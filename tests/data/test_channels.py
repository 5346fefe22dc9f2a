"""Channel mapping: by name, refused by position when names differ, explicit maps, and one evaluation."""

import json
import logging
from dataclasses import replace

import numpy as np
import pytest
from model_fixtures import train_tiny_run

from stllm.data import synthetic_city
from stllm.data.channels import map_channels, parse_channel_map


@pytest.fixture(scope="module")
def three():
    city = synthetic_city(seed=4, n_regions=3, days=2)
    extra = city.values[..., :1] * 3 + 1  # a third channel, different from both others
    return replace(city, values=np.concatenate([city.values, extra], -1), channels=("pickup", "dropoff", "tips"))


def test_names_in_another_order_are_reordered(three, caplog):
    city = replace(three, channels=("outflow", "tips", "inflow"))
    with caplog.at_level(logging.WARNING, logger="stllm"):
        mapped, used = map_channels(city, ["inflow", "outflow"])
    assert mapped.channels == ("inflow", "outflow") and used == {"inflow": "inflow", "outflow": "outflow"}
    np.testing.assert_array_equal(mapped.values[..., 0], city.values[..., 2])
    np.testing.assert_array_equal(mapped.values[..., 1], city.values[..., 0])
    assert "inflow -> inflow, outflow -> outflow; dropped ['tips']" in caplog.text


def test_different_names_are_refused_naming_both_lists(three):
    with pytest.raises(ValueError) as err:
        map_channels(three, ["inflow", "outflow"], what="data 'mine.npz'")
    msg = str(err.value)
    assert "['pickup', 'dropoff', 'tips']" in msg and "['inflow', 'outflow']" in msg
    assert "--channel_map new=trained" in msg and "data 'mine.npz' has 3 channels" in msg


def test_explicit_map_feeds_each_trained_channel_and_drops_the_rest(three, caplog):
    with caplog.at_level(logging.WARNING, logger="stllm"):
        mapped, used = map_channels(three, ["inflow", "outflow"], "pickup=outflow, dropoff=inflow")
    assert used == {"dropoff": "inflow", "pickup": "outflow"}  # in trained order
    assert mapped.channels == ("inflow", "outflow") and mapped.n_channels == 2
    np.testing.assert_array_equal(mapped.values[..., 0], three.values[..., 1])
    np.testing.assert_array_equal(mapped.values[..., 1], three.values[..., 0])
    assert "dropoff -> inflow, pickup -> outflow" in caplog.text and "dropped ['tips']" in caplog.text


@pytest.mark.parametrize("bad, match", [
    ("pickup=outflow,fares=inflow", r"has no channel\(s\) \['fares'\]; its channels are \['pickup', 'dropoff'"),
    ("pickup=outflow,dropoff=speed", r"the checkpoint has no channel\(s\) \['speed'\]; it was trained on"),
    ("pickup=outflow,dropoff=outflow", r"trained channel 'outflow' is fed twice \(by \['pickup', 'dropoff'\]\)"),
    ("pickup=outflow", r"trained channel\(s\) \['inflow'\] are fed by nothing"),
    ("pickup", r"'pickup' is not new=trained"),
])  # fmt: skip
def test_bad_maps_are_refused_by_name(three, bad, match):
    with pytest.raises(ValueError, match=match):
        map_channels(three, ["inflow", "outflow"], bad)


def test_unnamed_data_or_an_old_checkpoint_go_by_position_with_a_warning(three, caplog):
    two = replace(three, values=three.values[..., :2], channels=("channel_0", "channel_1"))
    with caplog.at_level(logging.WARNING, logger="stllm"):
        mapped, used = map_channels(two, ["inflow", "outflow"])
    assert mapped.channels == ("inflow", "outflow") and used == {"channel_0": "inflow", "channel_1": "outflow"}
    assert "fed by position" in caplog.text and "has no channel names" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="stllm"):
        same, _ = map_channels(three, ())
    assert same is three and "the checkpoint stores no channel names" in caplog.text
    with pytest.raises(ValueError, match="3 channels"):
        map_channels(replace(two, values=three.values, channels=("channel_0", "channel_1", "channel_2")),
                     ["inflow", "outflow"])  # fmt: skip
    assert parse_channel_map(None) is None and parse_channel_map({"a": "b"}) == {"a": "b"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("ckpt"), "--synthetic_regions", "8", "--synthetic_days", "21",
                          "--context_days", "2", "--context_weeks", "1", "--max_steps", "3")


def test_evaluation_with_swapped_and_renamed_channels_predicts_the_same(checkpoint, tmp_path, monkeypatch):
    """The training city with its channels swapped (by name) or renamed (with a map) is the same data to the
    model: same predictions and metrics; the mapping is in metrics.json."""
    from stllm.eval import zero_shot

    assert json.loads((checkpoint / "scaler.json").read_text())["channels"] == ["inflow", "outflow"]
    kw = {"eval_days": 1, "supervised": False, "progress": False, "plots": False, "baselines": ["last_value"],
          "ridge": False}  # fmt: skip
    base = zero_shot.evaluate(checkpoint, tmp_path / "base", **kw)
    original = zero_shot.load_city

    def swapped(names):
        def load(d_args):
            city = original(d_args)
            return replace(city, values=city.values[..., ::-1].copy(), channels=names)
        return load

    preds = {}
    for label, names, cmap in (("byname", ("outflow", "inflow"), None),
                               ("mapped", ("pickup", "dropoff"), "dropoff=inflow,pickup=outflow")):  # fmt: skip
        monkeypatch.setattr(zero_shot, "load_city", swapped(names))
        res = zero_shot.evaluate(checkpoint, tmp_path / label, channel_map=cmap, **kw)
        assert res.metrics == base.metrics
        rows = (tmp_path / label / "predictions.jsonl").read_text().splitlines()[1:]
        preds[label] = np.array([json.loads(r)["pred"] for r in rows])
        meta = json.loads((tmp_path / label / "metrics.json").read_text())
        assert list(meta["channels"].values()) == ["inflow", "outflow"]
    base_rows = (tmp_path / "base" / "predictions.jsonl").read_text().splitlines()[1:]
    np.testing.assert_array_equal(preds["byname"], np.array([json.loads(r)["pred"] for r in base_rows]))
    np.testing.assert_array_equal(preds["mapped"], preds["byname"])
    assert json.loads((tmp_path / "mapped" / "metrics.json").read_text())["channel_mapping"] == (
        "dropoff -> inflow, pickup -> outflow")
    with pytest.raises(ValueError, match=r"\['pickup', 'dropoff'\].*\['inflow', 'outflow'\].*--channel_map"):
        zero_shot.evaluate(checkpoint, tmp_path / "refused", **kw)
