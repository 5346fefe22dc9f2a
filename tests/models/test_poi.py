"""Next-POI scoring: relation features by hand, one pass == per-candidate scoring, the loss, errors."""

import math

import pytest
import torch
import torch.nn.functional as F
from model_fixtures import POI, VOCAB, tiny_model

from stllm.models.poi import RELATION_FEATURES, relation_features

COORDS = torch.tensor([[40.70, -74.00], [40.75, -73.99], [40.80, -73.95]])


def haversine_km(lat1, lon1, lat2, lon2):
    """Independent reference: the great-circle distance on a 6371 km sphere, in plain floats."""
    p1, p2, dp, dl = map(math.radians, (lat1, lat2, lat2 - lat1, lon2 - lon1))
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(h))


def test_relation_features_hand_worked_example():
    history = torch.tensor([[-1, 2, 0, 2]])  # ages 3 (pad), 2, 1, 0
    anchor = torch.tensor([[40.72, -73.98]])
    f = relation_features(history, 3, COORDS, anchor, decay=0.8)
    assert f.shape == (1, 3, len(RELATION_FEATURES))
    feat = dict(zip(RELATION_FEATURES, f[0].unbind(-1)))
    torch.testing.assert_close(feat["log_count"], torch.log1p(torch.tensor([1.0, 0.0, 2.0])))
    torch.testing.assert_close(feat["is_last"], torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(feat["recency"], torch.tensor([0.8, 0.0, 1 + 0.8**2]))
    want = [math.log(haversine_km(40.72, -73.98, float(la), float(lo)) + 0.05) for la, lo in COORDS.tolist()]
    torch.testing.assert_close(feat["log_distance"], torch.tensor(want), rtol=1e-4, atol=1e-4)
    assert (feat["log_transition"] == 0).all()  # no transition counts given


def test_relation_features_transition_and_padding():
    history = torch.tensor([[-1, -1, 1], [-1, -1, -1]])  # the second sample has no usable visit
    anchor = COORDS[[1, 0]]
    trans = torch.tensor([[0.0, 3.0, 1.5], [7.0, 0.0, 0.0]])
    f = relation_features(history, 3, COORDS, anchor, transition=trans)
    torch.testing.assert_close(f[..., 4], torch.log1p(trans))
    assert f[1, :, :3].abs().sum() == 0  # padding counts nothing, even at the last column
    torch.testing.assert_close(f[0, 1, :3], torch.tensor([math.log(2.0), 1.0, 1.0]))
    assert f[0, 1, 3] == pytest.approx(math.log(0.05), abs=1e-4)  # the anchor is candidate 1 itself


@pytest.mark.parametrize(
    "history, anchor, trans, match",
    [
        ([[0, 3]], [[40.7, -74.0]], None, "index 3, outside the 3 candidates"),
        ([[0, 1]], [[40.7, -74.0, 0.0]], None, r"poi_anchor must be \(1, 2\)"),
        ([[0, 1]], [40.7, -74.0], None, r"poi_anchor must be \(1, 2\)"),
        ([[0, 1]], [[40.7, -74.0]], [[1.0, 2.0]], r"poi_transition must be \(1, 3\), got \(1, 2\)"),
        ([0, 1], [[40.7, -74.0]], None, r"poi_history must be \(B, H\)"),
    ],
)
def test_relation_features_bad_inputs(history, anchor, trans, match):
    trans = None if trans is None else torch.tensor(trans)
    with pytest.raises(ValueError, match=match):
        relation_features(torch.tensor(history), 3, COORDS, torch.tensor(anchor), transition=trans)


# -- the model ------------------------------------------------------------------------------------------------------

B, L, P = 3, 12, 7
POI_AT = (11, 7, 4)  # one <poi_pre> per row, at different positions


def poi_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB - 10, (B, L), generator=g)
    for b, t in enumerate(POI_AT):
        ids[b, t] = POI
    cat_tokens = torch.tensor([[5, 9, -1], [12, -1, -1], [20, 21, 22]])  # (C, L), -1 padded
    history = torch.tensor([[-1, -1, 3, 0, 3, 5], [2, 2, 2, 6, 1, 2], [-1, -1, -1, -1, -1, 4]])
    coords = torch.stack([40.70 + 0.1 * torch.rand(P, generator=g), -74.0 + 0.1 * torch.rand(P, generator=g)], -1)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "poi_coords": coords,
        "poi_category": torch.tensor([0, 1, 2, 0, 1, 2, 2]),
        "poi_category_tokens": cat_tokens,
        "poi_history": history,
        "poi_anchor": coords[history[:, -1]],
        "poi_transition": torch.randint(0, 5, (B, P), generator=g).float(),
    }


def only_candidate(batch, c):
    """The same batch with a one-candidate table holding only candidate ``c`` (history remapped to it)."""
    one = dict(batch)
    one["poi_coords"] = batch["poi_coords"][c : c + 1]
    one["poi_category"] = batch["poi_category"][c : c + 1]
    one["poi_history"] = torch.where(batch["poi_history"] == c, 0, -1)  # same width: is_last stays at the end
    one["poi_transition"] = batch["poi_transition"][:, c : c + 1]
    return one


def test_one_pass_equals_per_candidate_scoring():
    model = tiny_model()
    batch = poi_batch()
    with torch.no_grad():
        scores = model(**batch).poi_scores
        single = torch.cat([model(**only_candidate(batch, c)).poi_scores for c in range(P)], dim=1)
    assert scores.shape == (B, P) and torch.isfinite(scores).all()
    torch.testing.assert_close(scores, single, rtol=1e-5, atol=1e-5)
    assert scores.std(dim=1).min() > 0  # candidates are told apart, so the comparison means something


def test_scores_use_the_poi_pre_hidden_state_and_history():
    model = tiny_model()
    batch = poi_batch()
    with torch.no_grad():
        base = model(**batch).poi_scores
        later = dict(batch, input_ids=batch["input_ids"].clone())
        for row, col in ((0, POI_AT[0] - 3), (1, POI_AT[1] + 2)):  # row 0: before <poi_pre>; row 1: after it
            later["input_ids"][row, col] = 7 if int(batch["input_ids"][row, col]) != 7 else 8
        after = model(**later).poi_scores
        no_hist = model(**dict(batch, poi_history=torch.full_like(batch["poi_history"], -1))).poi_scores
    torch.testing.assert_close(after[1], base[1])  # a token after <poi_pre> is not seen (causal)
    assert not torch.allclose(after[0], base[0])  # a token before it is
    assert not torch.allclose(no_hist, base)


def test_poi_loss_is_cross_entropy_over_known_targets():
    model = tiny_model()
    batch = poi_batch()
    targets = torch.tensor([3, -1, 4])
    out = model(**batch, poi_targets=targets)
    want = F.cross_entropy(out.poi_scores[[0, 2]], targets[[0, 2]])
    torch.testing.assert_close(out.poi_loss, want)
    torch.testing.assert_close(out.loss, model.config.poi_loss_weight * want)
    row0 = model(**{k: v[:2] if k in ("input_ids", "attention_mask", "poi_history", "poi_anchor",
                                       "poi_transition") else v for k, v in batch.items()},
                 poi_targets=torch.tensor([3, -1]))
    torch.testing.assert_close(row0.poi_loss, F.cross_entropy(row0.poi_scores[:1], torch.tensor([3])))
    out.loss.backward()
    for name, module in (("poi_head", model.poi_head), ("geo_projector", model.geo_projector)):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads), name
        assert sum(float(g.abs().sum()) for g in grads) > 0, name


def test_all_unknown_targets_give_zero_loss():
    model = tiny_model()
    out = model(**poi_batch(), poi_targets=torch.full((B,), -1))
    assert out.poi_loss.item() == 0.0


@pytest.mark.parametrize("count", [0, 2])
def test_rows_need_exactly_one_poi_pre(count):
    model = tiny_model()
    batch = poi_batch()
    ids = batch["input_ids"].clone()
    ids[1, POI_AT[1]] = 5
    if count == 2:
        ids[1, [2, 9]] = POI
    with pytest.raises(ValueError, match=rf"one <poi_pre> per prompt; row 1 has {count}"):
        model(**dict(batch, input_ids=ids))


def test_poi_targets_need_the_table():
    model = tiny_model()
    batch = poi_batch()
    with pytest.raises(ValueError, match="poi_targets given without the candidate table"):
        model(input_ids=batch["input_ids"], poi_targets=torch.zeros(B, dtype=torch.long))


@pytest.mark.parametrize("part", ["poi_anchor", "poi_history", "poi_category_tokens", "poi_category"])
def test_missing_table_part_is_named(part):
    model = tiny_model()
    with pytest.raises(ValueError, match=rf"missing {part}$"):
        model(**dict(poi_batch(), **{part: None}))


def test_bad_category_and_history_indices():
    model = tiny_model()
    batch = poi_batch()
    with pytest.raises(ValueError, match="poi_category holds indices outside the 3 categories"):
        model(**dict(batch, poi_category=torch.tensor([0, 1, 2, 3, 0, 0, 0])))
    with pytest.raises(ValueError, match="outside the 7 candidates"):
        model(**dict(batch, poi_history=batch["poi_history"] + 3))
