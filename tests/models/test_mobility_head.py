"""The cell-choice head read at <mob_pre> slots: padded candidates never win, rows are independent of the batch
they come in, the loss skips slots whose cell is not a candidate, and old configs build no head."""

import pytest
import torch
from transformers import LlamaConfig

from stllm.models import STLlamaConfig, STLlamaForCausalLM
from stllm.models.mobility import CellChoiceHead

F = 5


def tiny(mob: bool = True):
    text = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=1, vocab_size=60)
    extra = {"mob_pre_token_id": 59, "mob_features": F} if mob else {}
    torch.manual_seed(0)
    return STLlamaForCausalLM(STLlamaConfig(text_config=text, st_his_token_id=55, st_pre_token_id=56, geo_token_id=57,
                                            **extra)).eval()


def inputs(b=2, per_row=3, k=4):
    ids = torch.randint(0, 50, (b, 12))
    ids[:, 5:5 + per_row] = 59
    q = b * per_row
    return {"input_ids": ids, "mob_features": torch.rand(q, k, F), "mob_slot": torch.randint(0, 96, (q,)),
            "mob_valid": torch.ones(q, k, dtype=torch.bool)}


def test_padded_candidates_never_chosen():
    head = CellChoiceHead(8, F)
    valid = torch.tensor([[True, False, True], [False, False, True]])
    scores = head(torch.randn(2, 8), torch.rand(2, 3, F), torch.tensor([0, 95]), valid)
    assert torch.isinf(scores[~valid]).all() and torch.isfinite(scores[valid]).all()
    assert scores.argmax(1).tolist()[1] == 2
    with pytest.raises(ValueError, match="mob_slot"):
        head(torch.randn(2, 8), torch.rand(2, 3, F), torch.tensor([0, 96]), valid)
    with pytest.raises(ValueError, match=r"\(Q, K, 5\)"):
        head(torch.randn(3, 8), torch.rand(2, 3, F), torch.tensor([0, 1]), valid)


def test_scores_per_slot_and_loss():
    model, x = tiny(), inputs()
    with torch.no_grad():
        out = model(**x)
        assert out.mob_scores.shape == (6, 4)
        # the first row alone gives its own slots' scores (no leakage across the batch)
        one = {"input_ids": x["input_ids"][:1], **{k: v[:3] for k, v in x.items() if k != "input_ids"}}
        assert torch.allclose(model(**one).mob_scores, out.mob_scores[:3], atol=1e-5)
        target = torch.tensor([0, 1, 2, 3, -1, -1])
        loss = model(**x, mob_targets=target).mob_loss
        ce = torch.nn.functional.cross_entropy(out.mob_scores[:4], target[:4])
        assert loss == pytest.approx(float(ce), rel=1e-5)
    with pytest.raises(ValueError, match="outside the 4 candidates"):
        model(**x, mob_targets=torch.full((6,), 4))
    x["mob_slot"] = x["mob_slot"][:5]
    with pytest.raises(ValueError, match="one <mob_pre> and one mob_slot per row"):
        model(**x)


def test_without_mobility_config_no_head():
    model = tiny(mob=False)
    assert not hasattr(model, "mob_head") and "mob_head" not in str(model.state_dict().keys())
    with pytest.raises(ValueError, match="no mobility head"):
        model(**inputs())


def test_model_checks_mob_slot_in_its_one_host_read():
    from test_batch_checks import HostSyncs

    model, x = tiny(), inputs()
    with torch.no_grad():
        embeds = model.get_input_embeddings()(x["input_ids"])
        with HostSyncs() as plain:
            model.backbone(inputs_embeds=embeds)
        with HostSyncs() as ours:
            model(**x)
        extra = list(ours.calls)
        for c in plain.calls:
            extra.remove(c)
        assert extra == ["tolist"]
        with pytest.raises(ValueError, match=r"mob_slot must be day kind \* 48 \+ slot in \[0, 96\)"):
            model(**{**x, "mob_slot": torch.full_like(x["mob_slot"], 96)})
