"""STLlamaForCausalLM: splice, causality, errors, losses, gradients, save/load, backbones, generate."""

import pytest
import torch
import torch.nn.functional as F
from model_fixtures import GEO, HIS, PRE, VOCAB, make_batch, tiny_model
from transformers import AutoModelForCausalLM

from stllm import STLlamaForCausalLM
from stllm.models.lora import add_lora


def slot_states(model, out, input_ids):
    """The last layer's hidden states ``(Q, K, H)`` at the history and prediction placeholders, in reading order."""
    hidden = out.hidden_states[-1]
    k = model.config.st_slots
    return (hidden[input_ids == HIS].view(-1, k, hidden.shape[-1]),
            hidden[input_ids == PRE].view(-1, k, hidden.shape[-1]))  # fmt: skip


def naive_splice(model, input_ids, st_values, st_window, st_region):
    """Per-sample reference: walk each row and fill <st_his> slots with features in reading order."""
    embeds = model.get_input_embeddings()(input_ids).clone()
    k = model.config.st_slots
    feats = []
    for w, r in zip(st_window.tolist(), st_region.tolist()):
        series = st_values[w : w + 1, :, r : r + 1]  # one window, one region
        tokens = model.st_encoder(series).tokens[0, 0]  # (K, D)
        feats.extend(model.st_projector(tokens))
    it = iter(feats)
    for b in range(input_ids.shape[0]):
        for t in range(input_ids.shape[1]):
            if input_ids[b, t] == HIS:
                embeds[b, t] = next(it)
    assert next(it, None) is None and len(feats) == k * len(st_window)
    return embeds


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_splice_equals_naive_reference(model, padding_side):
    b = make_batch(pad=4, padding_side=padding_side, his_at=(1, 6, 10), pre_at=(13, 16, 20))
    with torch.no_grad():
        fast = model.splice(b["input_ids"], model.get_input_embeddings()(b["input_ids"]), **_st(b))
        slow = naive_splice(model, b["input_ids"], **_st(b))
    torch.testing.assert_close(fast, slow)
    his = b["input_ids"] == HIS
    assert not torch.allclose(fast[his], model.get_input_embeddings()(b["input_ids"])[his])


def test_graph_mixing_splice_gathers_from_full_windows():
    model = tiny_model(st_encoder_config={"graph_mixing": True})
    b = make_batch()
    adj = (torch.rand(7, 7) > 0.5).float()
    with torch.no_grad():
        tokens = model.encode_history(b["st_values"], b["st_window"], b["st_region"], adj)
        full = model.st_encoder(b["st_values"], adj).tokens
    torch.testing.assert_close(tokens, full[b["st_window"], b["st_region"]])


def _st(b):
    return {k: b[k] for k in ("st_values", "st_window", "st_region")}


def test_st_values_affect_hidden_states_at_and_after_first_history_slot_only(model):
    b = make_batch()
    other = dict(b, st_values=b["st_values"] + torch.randn_like(b["st_values"]))
    with torch.no_grad():
        h1 = model(**b, output_hidden_states=True).hidden_states[-1]
        h2 = model(**other, output_hidden_states=True).hidden_states[-1]
    for row in range(b["input_ids"].shape[0]):
        first = int((b["input_ids"][row] == HIS).nonzero()[0])
        assert torch.equal(h1[row, :first], h2[row, :first])
        diff = (h1[row, first:] - h2[row, first:]).abs().amax(dim=-1)
        assert (diff > 1e-6).all()


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_heads_read_prediction_slots_and_pair_with_their_history(kind):
    model = tiny_model(kind)
    for head in (model.reg_head, model.cls_head):  # zero at init: give the output layers weights to read
        torch.nn.init.normal_(head.out.weight, std=0.5)
    b = make_batch()
    with torch.no_grad():
        out = model(**b, output_hidden_states=True)
        enc = model.st_encoder(b["st_values"])
    his, pre = slot_states(model, out, b["input_ids"])
    # the regression head corrects the history's anchor in its own normalised units
    w, r = b["st_window"], b["st_region"]
    expected = (enc.anchor[w, r] + model.reg_head(his, pre)) * enc.scale[w, r] + enc.loc[w, r]
    torch.testing.assert_close(out.reg_pred, expected)
    torch.testing.assert_close(out.cls_logits, model.cls_head(his, pre))
    assert out.reg_pred.shape == (3, model.config.st_encoder.horizon, model.config.st_slots)
    assert not model.backbone.get_decoder()._forward_hooks  # the capture hook is scoped to the call


def test_prediction_pairs_with_nearest_preceding_history_view(model):
    """A prompt with two history views: the prediction reads the later one."""
    ids = torch.randint(3, 290, (1, 20))
    ids[0, 2:4] = HIS
    ids[0, 7:9] = HIS
    ids[0, 12:14] = PRE
    x = torch.randn(1, 12, 3, 2)
    with torch.no_grad():
        out = model(
            input_ids=ids,
            st_values=x,
            st_window=torch.tensor([0, 0]),
            st_region=torch.tensor([0, 1]),
            output_hidden_states=True,
        )
        enc = model.st_encoder(x[:, :, 1:2])  # the later view: region 1
    h = out.hidden_states[-1][0]
    correction = model.reg_head(h[7:9][None], h[12:14][None])
    torch.testing.assert_close(out.reg_pred, (enc.anchor[:, 0] + correction) * enc.scale[:, 0] + enc.loc[:, 0])


def _errors_cases():
    b = make_batch()
    bad_values = b["st_values"].clone()
    bad_values[0, 3, 1, 0] = float("nan")
    inf_values = b["st_values"].clone()
    inf_values[1, 0, 0, 1] = float("inf")
    ids_oov = b["input_ids"].clone()
    ids_oov[0, 0] = VOCAB + 5
    return [
        (dict(b, st_window=b["st_window"][:2], st_region=b["st_region"][:2]), r"6 slot tokens .* = 4 features"),
        (dict(b, st_values=b["st_values"][0]), r"\(W, T, N, C\)"),
        (dict(b, st_values=torch.randn(2, 12, 7, 3)), "3 channels"),
        (dict(b, st_values=bad_values), "NaN or inf"),
        (dict(b, st_values=inf_values), "NaN or inf"),
        (dict(b, st_region=torch.tensor([0, 7, 1])), r"st_region holds indices outside \[0, 7\)"),
        (dict(b, st_window=torch.tensor([0, 2, 1])), r"st_window holds indices outside \[0, 2\)"),
        ({"input_ids": b["input_ids"]}, "no st_values"),
        (dict(b, input_ids=ids_oov), "outside the vocabulary"),
        (dict(b, st_window=None), "without st_window"),
        (dict(b, reg_targets=torch.zeros(3, 12, 3)), "reg_targets has shape"),
    ]


@pytest.mark.parametrize("inputs,match", _errors_cases())
def test_bad_input_raises_clear_error(model, inputs, match):
    with pytest.raises(ValueError, match=match):
        model(**inputs)


def test_geo_slots_receive_geo_features(model):
    ids = torch.randint(3, 290, (2, 10))
    ids[0, 2] = GEO
    ids[1, 4] = GEO
    ids[1, 6] = GEO
    coords = torch.tensor([[40.7, -74.0], [40.8, -73.9], [31.2, 121.5]])
    with torch.no_grad():
        emb = model.splice(ids, model.get_input_embeddings()(ids), geo_coords=coords)
        expected = model.geo_projector(model.geo_encoder(coords))
    torch.testing.assert_close(emb[ids == GEO], expected)
    with pytest.raises(ValueError, match="3 slot tokens but 2 placeholder"):
        model(input_ids=ids, geo_coords=coords[:2])


def test_loss_is_weighted_sum_of_terms_and_ignores_masked_targets():
    model = tiny_model(lm_loss_weight=0.5, reg_loss_weight=2.0, cls_loss_weight=3.0)
    b = make_batch()
    labels = b["input_ids"].clone()
    labels[:, :10] = -100
    shape = (3, 12, 2)
    reg_t, cls_t = torch.randn(shape), (torch.rand(shape) > 0.5).float()
    reg_m = torch.rand(shape) > 0.3
    cls_m = torch.rand(shape) > 0.3
    with torch.no_grad():
        out = model(**b, labels=labels, reg_targets=reg_t, reg_mask=reg_m, cls_targets=cls_t, cls_mask=cls_m)
    torch.testing.assert_close(out.loss, 0.5 * out.lm_loss + 2.0 * out.reg_loss + 3.0 * out.cls_loss)
    ref_lm = F.cross_entropy(out.logits[:, :-1].reshape(-1, VOCAB), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.lm_loss, ref_lm)
    torch.testing.assert_close(out.reg_loss, (out.reg_pred - reg_t).abs()[reg_m].mean())
    ref_cls = F.binary_cross_entropy_with_logits(out.cls_logits[cls_m], cls_t[cls_m])
    torch.testing.assert_close(out.cls_loss, ref_cls)
    # changing targets where the mask is off changes nothing
    reg_t2 = torch.where(reg_m, reg_t, reg_t + 100.0)
    cls_t2 = torch.where(cls_m, cls_t, 1.0 - cls_t)
    with torch.no_grad():
        out2 = model(**b, labels=labels, reg_targets=reg_t2, reg_mask=reg_m, cls_targets=cls_t2, cls_mask=cls_m)
    torch.testing.assert_close(out2.loss, out.loss)


def test_gradients_reach_trainable_parts_only():
    model = tiny_model().train()
    peft_model = add_lora(model, r=4, alpha=8, dropout=0.0)
    b = make_batch()
    out = peft_model(**b, labels=b["input_ids"], reg_targets=torch.randn(3, 12, 2), cls_targets=torch.ones(3, 12, 2))
    out.loss.backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters()}
    nonzero = {n for n, g in grads.items() if g is not None and g.abs().sum() > 0}
    for part in ("st_projector", "reg_head", "cls_head", "lora_B", "trainable_tokens_delta"):
        assert any(part in n for n in nonzero), part
    frozen = [n for n, p in peft_model.named_parameters() if not p.requires_grad]
    assert any("st_encoder" in n for n in frozen) and any("embed_tokens.token_adapter.base_layer" in n for n in frozen)
    assert all(grads[n] is None for n in frozen)
    # only the slot-token rows are trainable: <st_pre> learns; <st_his> rows are overwritten by the splice
    delta = next(p for n, p in peft_model.named_parameters() if "trainable_tokens_delta" in n)
    assert delta.shape[0] == 4  # <st_his>, <st_pre>, <geo>, <poi_pre>
    assert delta.grad[1].abs().sum() > 0 and delta.grad[0].abs().sum() == 0


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_save_and_load_are_bit_identical(tmp_path, kind):
    model = tiny_model(kind)
    b = make_batch()
    with torch.no_grad():
        ref = model(**b)
    model.save_pretrained(tmp_path)
    for loader in (STLlamaForCausalLM, AutoModelForCausalLM):
        back = loader.from_pretrained(tmp_path).eval()
        assert type(back) is STLlamaForCausalLM
        with torch.no_grad():
            out = back(**b)
        assert torch.equal(out.logits, ref.logits)
        assert torch.equal(out.reg_pred, ref.reg_pred)
        assert torch.equal(out.cls_logits, ref.cls_logits)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_backbones_train_end_to_end(kind):
    model = tiny_model(kind).train()
    b = make_batch()
    out = model(**b, labels=b["input_ids"], reg_targets=torch.randn(3, 12, 2))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.st_projector.net.weight.grad.abs().sum() > 0
    assert model.reg_head.out.weight.grad.abs().sum() > 0
    assert out.logits.shape == (3, 24, VOCAB)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_generate_with_placeholders_matches_no_cache_forward(kind):
    model = tiny_model(kind)
    b = make_batch(pad=3, padding_side="left", his_at=(1, 3, 5), pre_at=(12, 14, 16))
    with torch.no_grad():
        full = model(**b)
        seqs = model.generate(**b, max_new_tokens=6, do_sample=False)
        no_cache = model.generate(**b, max_new_tokens=6, do_sample=False, use_cache=False)
    prompt_len = b["input_ids"].shape[1]
    assert seqs.shape == (3, prompt_len + 6)
    assert torch.equal(seqs[:, prompt_len], full.logits[:, -1].argmax(-1))
    assert torch.equal(seqs, no_cache)
    assert not torch.isin(seqs[:, prompt_len:], torch.tensor([HIS, GEO])).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dtype_follows_backbone(dtype):
    model = tiny_model().to(dtype)
    b = make_batch()
    b["st_values"] = b["st_values"].double()  # any float input is cast to the model's dtype
    with torch.no_grad():
        out = model(**b, reg_targets=torch.zeros(3, 12, 2))
    assert out.logits.dtype == dtype
    # heads, anchor, normalisation and losses come out in fp32 whatever the backbone's dtype
    assert out.reg_pred.dtype == out.cls_logits.dtype == out.reg_loss.dtype == torch.float32


def test_event_loss_uses_positive_class_weights():
    model = tiny_model(cls_pos_weight=[4.0, 9.0])
    b = make_batch()
    target = (torch.rand(3, 12, 2) > 0.8).float()
    with torch.no_grad():
        out = model(**b, cls_targets=target)
    ref = F.binary_cross_entropy_with_logits(out.cls_logits, target, pos_weight=torch.tensor([4.0, 9.0]))
    torch.testing.assert_close(out.cls_loss, ref)
    assert out.cls_loss > F.binary_cross_entropy_with_logits(out.cls_logits, target)


def test_bf16_autocast_keeps_normalisation_anchor_heads_and_loss_in_fp32():
    """Under bf16 autocast the backbone runs in bf16 but the forecast (anchor + correction, mapped back
    with the history's statistics) is computed in fp32: predictions stay within bf16 noise of fp32."""
    model = tiny_model(st_encoder_config={"days": 1, "weeks": 2})
    torch.nn.init.normal_(model.reg_head.out.weight, std=0.05)  # a "trained" correction
    torch.nn.init.normal_(model.st_encoder.linear_proj.weight, std=0.05)  # and a trained encoder correction
    b = make_batch()
    length = model.config.st_encoder.context_length
    b["st_values"] = 50.0 + 20.0 * torch.rand(2, length, 7, 2)  # busy regions: a large level, where bf16 hurts
    target = torch.full((3, 12, 2), 55.0)
    with torch.no_grad():
        ref = model(**b, reg_targets=target)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(**b, reg_targets=target)
    assert low.logits.dtype == torch.bfloat16  # the backbone did run in bf16
    assert low.reg_pred.dtype == torch.float32 and low.reg_loss.dtype == torch.float32
    # bf16 has 8 bits of mantissa: on values near 60 a bf16 forecast would be off by up to ~0.25
    err = (low.reg_pred - ref.reg_pred).abs().max()
    assert err < 0.05, err
    assert (low.reg_loss - ref.reg_loss).abs() < 0.01


def test_encoder_runs_in_fp32_under_autocast():
    """The encoder's forecast is the base the heads correct: autocast must not round it to bf16."""
    model = tiny_model(st_encoder_config={"days": 1, "weeks": 2})
    torch.nn.init.normal_(model.st_encoder.linear_proj.weight, std=0.5)
    b = make_batch()
    b["st_values"] = 50.0 + 20.0 * torch.rand(2, model.config.st_encoder.context_length, 7, 2)
    args = (b["st_values"], b["st_window"], b["st_region"])
    with torch.no_grad():
        ref = model.encode_context(*args)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model.encode_context(*args)
    assert low.base.dtype == torch.float32 and low.tokens.dtype == torch.float32
    torch.testing.assert_close(low.base, ref.base)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_a_cached_continuation_uses_the_backbone_cache_argument_without_deprecation(kind, monkeypatch):
    """transformers 5.2x renamed the cache argument (the old one warns and goes in 5.40) and the output field
    (reading ``.past_key_values`` logs once per process: a recorder stands in for the logger): the shared-prefix
    pass hands its cache over under the backbone's own names and reads the same heads as a plain pass."""
    import warnings

    from transformers.utils import generic

    from stllm.eval.slot_pass import SlotPass

    said = []
    monkeypatch.setattr(generic.logger, "warning_once", lambda *a, **k: said.append(a))
    model, batch = tiny_model(kind).eval(), make_batch()
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        reg, _ = SlotPass(model)(batch)
        plain = model(**{k: v for k, v in batch.items() if k != "labels"})
    assert not [w for w in caught if "past_key_values" in str(w.message)] and not said
    torch.testing.assert_close(reg, plain.reg_pred, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_forward_hands_back_the_cache_without_touching_a_deprecated_name(kind, monkeypatch):
    """Reading a backbone output's ``past_key_values`` logs a deprecation on transformers 5.2x (once per process,
    so a recorder stands in for the logger); the model's own output still carries the cache for generate."""
    from transformers.utils import generic

    said = []
    monkeypatch.setattr(generic.logger, "warning_once", lambda *a, **k: said.append(a))
    model, batch = tiny_model(kind).eval(), make_batch()
    with torch.no_grad():
        out = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=True)
    assert not said
    assert out.past_key_values is not None and out.past_key_values.get_seq_length() == batch["input_ids"].shape[1]


def test_event_logits_correct_the_encoders_logistic_path():
    """With an event-logit path the untrained head adds nothing: the model's event logits are the encoder's plus
    log(pos_weight), the optimum of the class-balanced BCE; a trained head adds its own output on top."""
    model = tiny_model(st_encoder_config={"event_logits": True}, cls_pos_weight=[4.0, 9.0])
    torch.nn.init.normal_(model.st_encoder.event_proj.weight, std=0.1)
    torch.nn.init.normal_(model.st_encoder.event_proj.bias, std=1.0)
    b = make_batch()
    w, r = b["st_window"], b["st_region"]
    with torch.no_grad():
        enc = model.st_encoder(b["st_values"])
        out = model(**b, output_hidden_states=True)
    shift = torch.log(torch.tensor([4.0, 9.0]))
    torch.testing.assert_close(out.cls_logits, enc.event_logits[w, r] + shift)
    assert enc.event_logits[w, r].std() > 0.1  # the encoder's part is not a constant
    torch.nn.init.normal_(model.cls_head.out.weight, std=0.5)
    his, pre = slot_states(model, out, b["input_ids"])
    with torch.no_grad():
        out = model(**b)
        torch.testing.assert_close(out.cls_logits, model.cls_head(his, pre) + enc.event_logits[w, r] + shift)
    plain = tiny_model(cls_pos_weight=[4.0, 9.0])
    assert plain.st_encoder.event_proj is None and plain.cls_head.out.weight.abs().sum() > 0  # unchanged init


def test_level_scaled_correction_multiplies_the_heads_correction_by_the_gain():
    enc_cfg = {"weeks": 1, "level_len": 12, "level_zero": [0.0, 0.0], "level_unit": [1.0, 1.0],
               "level_scales_correction": True}  # fmt: skip
    model = tiny_model(st_encoder_config=enc_cfg)
    with torch.no_grad():
        model.st_encoder.level_weights.fill_(0.7)
        torch.nn.init.normal_(model.st_encoder.end_conv_2.weight, std=0.05)  # the encoder's own correction
    torch.nn.init.normal_(model.reg_head.out.weight, std=0.5)
    b = make_batch()
    t = model.st_encoder.config.context_length
    b["st_values"] = torch.rand(2, t, 7, 2, generator=torch.Generator().manual_seed(1)) * 10  # counts > 0
    with torch.no_grad():
        out = model(**b, output_hidden_states=True)
        enc = model.st_encoder(b["st_values"])
    his, pre = slot_states(model, out, b["input_ids"])
    w, r = b["st_window"], b["st_region"]
    assert (enc.gain[w, r] - 1).abs().max() > 0.05
    with torch.no_grad():
        expected = (enc.base[w, r] + enc.gain[w, r] * model.reg_head(his, pre)) * enc.scale[w, r] + enc.loc[w, r]
    torch.testing.assert_close(out.reg_pred, expected)
    model.st_encoder.requires_grad_(False)  # stage 2: a frozen encoder, kept in eval mode by model.train()
    model.train()  # training: neither the encoder's nor the head's correction is scaled
    with torch.no_grad():
        out = model(**b, output_hidden_states=True)
        plain = model.st_encoder(b["st_values"], scale_correction=False)
    assert not model.st_encoder.training and plain.gain is None
    his, pre = slot_states(model, out, b["input_ids"])
    with torch.no_grad():
        expected = (plain.base[w, r] + model.reg_head(his, pre)) * plain.scale[w, r] + plain.loc[w, r]
    assert (plain.base - enc.base).abs().max() > 1e-3  # the scaled and the unscaled base differ here
    torch.testing.assert_close(out.reg_pred, expected)
