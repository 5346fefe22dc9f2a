"""DeviceChecks / flat_positions, and the forward's host synchronisations counted."""

import pytest
import torch
from model_fixtures import GEO, HIS, PRE, make_batch, tiny_model
from torch.overrides import TorchFunctionMode

from stllm.batch_checks import DeviceChecks, flat_positions


class HostSyncs(TorchFunctionMode):
    """Counts the tensor operations that make the host wait for the device on CUDA: reading a value
    (item, tolist, bool/int/float), nonzero, and indexing or selecting with a boolean mask."""

    READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero", "masked_select",
             "unique", "masked_scatter", "argwhere"}

    def __init__(self):
        super().__init__()
        self.calls: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", str(func))
        bool_index = name in ("__getitem__", "__setitem__") and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool
            for i in (args[1] if isinstance(args[1], tuple) else (args[1],))
        )
        if name in self.READS or bool_index:
            self.calls.append(name)
        return func(*args, **(kwargs or {}))


def test_flat_positions_equal_nonzero_in_reading_order():
    g = torch.Generator().manual_seed(3)
    for shape in [(4, 9), (1, 1), (3, 0), (5, 7)]:
        mask = torch.rand(shape, generator=g) > 0.6
        expected = torch.nonzero(mask.reshape(-1)).reshape(-1)
        assert torch.equal(flat_positions(mask, int(mask.sum())), expected)
    assert flat_positions(torch.tensor([[False, True], [True, False]]), 2).tolist() == [1, 2]


def test_checks_resolve_counts_and_raise_the_first_failure_with_its_message():
    checks = DeviceChecks()
    a = checks.count(torch.tensor(7))
    checks.fail_if(torch.tensor(False), "never")
    b = checks.count(torch.tensor([[3]]))
    assert [checks.resolve()[i] for i in (a, b)] == [7, 3]
    checks.fail_if(torch.tensor(True), lambda: "second " + "message")
    checks.fail_if(True, "third")
    with pytest.raises(ValueError, match="^second message$"):
        checks.resolve()


def test_forward_adds_one_host_read_to_the_backbone_and_heads_match_boolean_indexing():
    model = tiny_model()
    b = make_batch(pad=3)
    with torch.no_grad():
        embeds = model.get_input_embeddings()(b["input_ids"])
        with HostSyncs() as plain:
            model.backbone(inputs_embeds=embeds, attention_mask=b["attention_mask"])
        with HostSyncs() as ours:
            out = model(**b, output_hidden_states=True)
    extra = list(ours.calls)
    for c in plain.calls:
        extra.remove(c)
    assert extra == ["tolist"], f"host reads beyond the backbone's: {extra}"
    # the heads read the hidden states boolean indexing picks, each prediction paired with its own history
    h, k = out.hidden_states[-1], model.config.st_slots
    layout = model.slot_layout(b["input_ids"], b["st_values"], b["st_window"], b["st_region"])
    his_h, pre_h, group = model._slot_hidden(h, layout)
    assert torch.equal(pre_h, h[b["input_ids"] == PRE].view(-1, k, h.shape[-1]))
    assert torch.equal(his_h, h[b["input_ids"] == HIS].view(-1, k, h.shape[-1]))
    assert group.tolist() == [0, 1, 2]


def _extra_reads(model, inputs: dict) -> list[str]:
    with torch.no_grad():
        embeds = model.get_input_embeddings()(inputs["input_ids"])
        with HostSyncs() as plain:
            model.backbone(inputs_embeds=embeds, attention_mask=inputs.get("attention_mask"))
        with HostSyncs() as ours:
            model(**inputs)
    extra = list(ours.calls)
    for c in plain.calls:
        extra.remove(c)
    return extra


def test_coordinates_are_checked_in_the_same_single_read_and_still_named():
    model = tiny_model()
    b = make_batch()
    b["input_ids"][:, 0] = GEO
    b["geo_coords"] = torch.tensor([[40.7, -74.0], [40.8, -73.9], [31.2, 121.5]])
    assert _extra_reads(model, b) == ["tolist"]
    with pytest.raises(ValueError, match=r"geo_coords: latitude outside \[-90, 90\].*\(lon, lat\)"):
        model(**{**b, "geo_coords": b["geo_coords"].flip(-1)})
