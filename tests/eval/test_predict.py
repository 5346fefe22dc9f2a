"""Batched single-pass prediction: equals per-sample forwards (also through the SlotPass shortcuts), inverse-scales,
streams and resumes."""

import json

import numpy as np
import pytest
import torch
from model_fixtures import make_batch, tiny_model
from transformers import LlamaConfig

from stllm import STLlamaConfig, STLlamaForCausalLM
from stllm.data import STDataCollator, STInstructionDataset, STScaler, synthetic_city, train_tokenizer
from stllm.data.prompts import ChatFormatter
from stllm.eval.predict import predict
from stllm.eval.slot_pass import SlotPass
from stllm.models.st_llama import SPLICE_INPUTS
from stllm.tokens import add_st_tokens


def _setup(task="flow"):
    city = synthetic_city(seed=1, n_regions=6, days=6 if task == "flow" else 60, freq="1h", task=task)
    scaler = STScaler.fit(city, regions=city.region_ids[:4])
    ds = STInstructionDataset(city, scaler, regions=city.region_ids[4:], stride=12)
    fmt = ChatFormatter(None)
    tok = train_tokenizer(["\n".join(fmt(ds[i]["conversation"])) for i in range(len(ds))], vocab_size=400)
    ids = add_st_tokens(tok)
    c = city.n_channels
    text = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=len(tok))  # fmt: skip
    torch.manual_seed(0)
    cfg = STLlamaConfig(text_config=text, **ids.as_config(),
                        st_encoder_config={"in_channels": c, "out_channels": c, "num_tokens": c})  # fmt: skip
    return STLlamaForCausalLM(cfg).eval(), tok, ds, scaler


@pytest.fixture(scope="module")
def setup():
    return _setup()


def test_batched_pass_equals_per_sample_forward_in_original_units(setup):
    model, tok, ds, scaler = setup
    batched = predict(model, tok, ds, scaler, batch_size=8, progress=False)
    single = predict(model, tok, ds, scaler, batch_size=1, progress=False)
    assert batched.shape == (ds.n_windows, ds.n_regions, 12, 2)
    np.testing.assert_allclose(batched, single, atol=1e-4)
    # one sample by hand: forward, read the head, invert the scaler
    i = ds.index_of(1, 1)
    batch = STDataCollator(tok, st_slots=2)([ds[i]])
    batch.pop("labels")
    with torch.no_grad():
        scaled = model(**batch).reg_pred[0].numpy()
    np.testing.assert_allclose(batched[1, 1], scaler.inverse(scaled), rtol=1e-4, atol=1e-3)


def test_resume_after_a_kill_gives_identical_rows_without_duplicates(setup, tmp_path):
    model, tok, ds, scaler = setup
    out = tmp_path / "predictions.jsonl"
    run = {"checkpoint": "unit", "regions": list(map(str, ds.region_idx))}
    full = predict(model, tok, ds, scaler, batch_size=4, progress=False)
    predict(model, tok, ds, scaler, batch_size=4, output=out, run=run, progress=False, max_batches=2)  # "killed"
    partial = out.with_name(out.name + ".partial")
    assert partial.is_file() and not out.exists()
    assert len(partial.read_text().splitlines()) == 1 + 8
    resumed = predict(model, tok, ds, scaler, batch_size=4, output=out, run=run, progress=False)
    np.testing.assert_allclose(resumed, full, atol=1e-5)
    lines = out.read_text().splitlines()
    keys = [json.loads(x)["key"] for x in lines[1:]]
    assert len(keys) == len(ds) == len(set(keys)) and not partial.exists()
    with pytest.raises(ValueError, match="another run"):
        predict(model, tok, ds, scaler, output=out, run={"checkpoint": "other"}, progress=False)


def test_a_row_cut_by_a_kill_loses_only_itself_and_the_next_row_starts_a_new_line(setup, tmp_path):
    """Kill mid-write (the last line cut), resume, kill again: every complete row survives both resumes."""
    from stllm.eval.predict import PredictionFile

    model, tok, ds, scaler = setup
    out, run = tmp_path / "predictions.jsonl", {"checkpoint": "unit"}
    predict(model, tok, ds, scaler, batch_size=4, output=out, run=run, progress=False, max_batches=2)
    partial = out.with_name(out.name + ".partial")
    partial.write_bytes(partial.read_bytes()[:-15])  # the 8th row cut mid-write
    assert len(PredictionFile(out, run).done()) == 7
    predict(model, tok, ds, scaler, batch_size=4, output=out, run=run, progress=False, max_batches=1)
    assert len(PredictionFile(out, run).done()) == 7 + 4  # the appended rows are not glued to the cut line
    lines = partial.read_text().splitlines()
    lines.insert(3, '{"key": "broken')  # a bad line in the middle: the rows after it are kept
    partial.write_text("\n".join(lines) + "\n")
    assert len(PredictionFile(out, run).done()) == 11
    resumed = predict(model, tok, ds, scaler, batch_size=4, output=out, run=run, progress=False)
    np.testing.assert_allclose(resumed, predict(model, tok, ds, scaler, batch_size=8, progress=False), atol=1e-5)
    keys = [json.loads(x)["key"] for x in out.read_text().splitlines()[1:]]
    assert len(keys) == len(ds) == len(set(keys))


def test_another_runs_file_is_refused_naming_the_part_and_overwrite_starts_fresh(setup, tmp_path):
    model, tok, ds, scaler = setup
    out = tmp_path / "predictions.jsonl"
    old = {"weights": "aa", "data": "d", "options": {"rescale": False, "stride": 12}}
    predict(model, tok, ds, scaler, batch_size=8, output=out, run=old, progress=False)
    new = {"weights": "bb", "data": "d", "options": {"rescale": True, "stride": 12}}
    with pytest.raises(ValueError, match=r"differs in: options\.rescale, weights\); pass --overwrite"):
        predict(model, tok, ds, scaler, output=out, run=new, progress=False)
    out.write_text(out.read_text().replace(out.read_text().splitlines()[3], '{"key": "x", "pred": [[1.0]]}'))
    predict(model, tok, ds, scaler, batch_size=8, output=out, run=new, progress=False, overwrite=True)
    header, *rows = out.read_text().splitlines()
    assert json.loads(header)["run"] == new and len(rows) == len(ds)
    assert "x" not in {json.loads(r)["key"] for r in rows}  # nothing of the old file was kept


@pytest.mark.parametrize("size", [0, -1])
def test_batch_size_below_one_is_refused_by_name(setup, size):
    model, tok, ds, scaler = setup
    with pytest.raises(ValueError, match="--batch_size"):
        predict(model, tok, ds, scaler, batch_size=size, progress=False)


def test_events_give_the_sigmoid_of_the_models_own_event_logits():
    model, tok, ds, scaler = _setup("event")
    prob = predict(model, tok, ds, scaler, batch_size=8, progress=False)
    assert prob.shape[-1] == ds.city.n_channels and ((prob >= 0) & (prob <= 1)).all()
    collator = STDataCollator(tok, st_slots=model.config.st_slots)
    for w, r in ((0, 0), (ds.n_windows - 1, 1)):  # a plain forward of one sample, no SlotPass, no batching
        batch = collator([ds[ds.index_of(w, r)]])
        batch.pop("labels")
        with torch.no_grad():
            logits = model(**batch).cls_logits[0].double().numpy()
        np.testing.assert_allclose(prob[w, r], 1 / (1 + np.exp(-logits)), atol=1e-5)
    assert np.ptp(prob.reshape(-1, prob.shape[-1]), axis=0).min() > 0  # not one constant per channel
    assert np.ptp(prob, axis=-1).max() > 0  # channels differ


def test_generate_mode_reads_heads_at_generated_slots_and_never_falls_back(setup, monkeypatch):
    model, tok, ds, scaler = setup
    forced = predict(model, tok, ds, scaler, batch_size=8, progress=False)
    collator = STDataCollator(tok, st_slots=2)
    answers = {}
    for i in range(len(ds)):
        b = collator([ds[i]])
        answers[tuple(b["input_ids"][0][b["labels"][0] == -100].tolist())] = b["input_ids"][0]

    def perfect(input_ids, **kwargs):  # a generator that writes exactly the answer template
        return answers[tuple(input_ids[0].tolist())][None]

    monkeypatch.setattr(model, "generate", perfect)
    generated = predict(model, tok, ds, scaler, progress=False, generate=True)
    np.testing.assert_allclose(generated, forced, atol=1e-4)

    def no_slots(input_ids, **kwargs):  # generation without the prediction run: a parse failure
        return torch.cat([input_ids, torch.full((1, 5), 7)], dim=1)

    monkeypatch.setattr(model, "generate", no_slots)
    failed = predict(model, tok, ds, scaler, progress=False, generate=True)
    assert np.isnan(failed).all()  # no fallback value is invented


def test_padding_side_does_not_change_predictions(setup):
    """The attention mask reaches the model: left padding (pads before the prompt) must not leak in."""
    from stllm.eval.predict import predict_batch

    model, tok, ds, scaler = setup
    samples = [ds[i] for i in range(0, len(ds), 3)]
    right = predict_batch(model, STDataCollator(tok, st_slots=2, padding_side="right")(samples), "flow", scaler)
    left = predict_batch(model, STDataCollator(tok, st_slots=2, padding_side="left")(samples), "flow", scaler)
    np.testing.assert_allclose(left, right, rtol=1e-4, atol=1e-3)


def _inputs(batch):
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", *SPLICE_INPUTS)}


def test_slot_pass_equals_plain_forward_whole_batch_and_per_sample(setup):
    """Cut after the last <st_pre>, shared prefix run once into a cache: the heads equal one plain forward over
    the padded batch and a plain forward per sample (whole prompt + answer, no padding)."""
    model, tok, ds, _ = setup
    collator = STDataCollator(tok, st_slots=2)
    samples = [ds[i] for i in range(len(ds))]
    batch = collator(samples)
    fast = SlotPass(model)
    reg, cls = fast(batch)
    assert fast._prefix is not None and len(fast._prefix[0]) >= 20  # system prompt + instruction, run once
    last_pre = int((batch["input_ids"] == model.config.st_pre_token_id).nonzero()[:, 1].max())
    assert batch["input_ids"].shape[1] > last_pre + 1  # a tail to cut
    with torch.no_grad():
        full = model(**_inputs(batch))
        single = [model(**_inputs(collator([s]))) for s in samples]
    per_sample = torch.cat([o.reg_pred for o in single]), torch.cat([o.cls_logits for o in single])
    for got, want in ((reg, full.reg_pred), (cls, full.cls_logits), (reg, per_sample[0]), (cls, per_sample[1])):
        assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    # a later batch with a (possibly longer) shared prefix; prefix sharing off gives the same
    sub, _ = fast(collator(samples[1::3]))
    assert torch.allclose(sub, reg[1::3], atol=1e-5)
    plain_prefix, _ = SlotPass(model, share_prefix=False)(batch)
    assert torch.allclose(plain_prefix, reg, atol=1e-5)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_slot_pass_on_random_batches_with_padding_and_other_backbones(kind):
    """Random ids with a shared 10-token prefix, right padding, slots at row-specific positions, on two
    backbones; left padding takes the plain model(...) path with the same result."""
    model = tiny_model(kind)
    batch = make_batch(length=40, his_at=(12, 15, 19), pre_at=(22, 26, 30), pad=3)
    batch["input_ids"][:, :10] = batch["input_ids"][:1, :10]
    fast = SlotPass(model)
    reg, cls = fast(batch)
    with torch.no_grad():
        full = model(**batch)
    assert torch.allclose(reg, full.reg_pred, atol=1e-5) and torch.allclose(cls, full.cls_logits, atol=1e-5)
    assert len(fast._prefix[0]) == 10
    left = make_batch(length=40, his_at=(12, 15, 19), pre_at=(22, 26, 30), pad=3, padding_side="left")
    with torch.no_grad():
        want = model(**left).reg_pred
    assert torch.allclose(SlotPass(model)(left)[0], want, atol=1e-5)


def test_slot_pass_runs_the_prefix_every_batch_shares_once_per_run_and_counts_tokens():
    """Two batches share 10 tokens (the system prompt) and each shares 4 more within itself: the 10 run once,
    each batch's 4 continue from them; every row's rest runs up to the batch's last <st_pre>. Heads equal a
    plain forward; the token count is the hand sum."""
    model = tiny_model("llama")
    first = make_batch(length=30, his_at=(16, 17, 18), pre_at=(21, 22, 24))
    second = make_batch(length=30, his_at=(16, 19, 18), pre_at=(23, 21, 22), seed=1)
    for b in (first, second):
        b["input_ids"][:, :14] = b["input_ids"][:1, :14]
    second["input_ids"][:, :10] = first["input_ids"][0, :10]
    second["input_ids"][:, 10] = (first["input_ids"][0, 10] + 1) % 200 + 3  # diverge right after the 10
    fast = SlotPass(model)
    for b in (first, second):
        reg, cls = fast(b)
        with torch.no_grad():
            full = model(**b)
        assert torch.allclose(reg, full.reg_pred, atol=1e-5) and torch.allclose(cls, full.cls_logits, atol=1e-5)
    assert len(fast._root[0]) == 10 and len(fast._prefix[0]) == 14
    # first: 14 (its prefix, the first root) + 3 x (26 - 14); second: 10 (the root, shrunk once) + 4 + 3 x (25 - 14)
    assert fast.tokens.computed == 14 + 3 * 12 + 10 + 4 + 3 * 11
    assert (fast.tokens.samples, fast.tokens.prompt) == (6, 6 * 30)


def test_untrained_model_forecasts_the_historical_average_through_the_whole_pipeline():
    """Residual heads start at zero: dataset -> collator -> model -> inverse scaler gives exactly the
    historical average on held-out regions, before any training."""
    from stllm.eval.baselines import historical_average

    city = synthetic_city(seed=2, n_regions=6, days=30, freq="1h")
    scaler = STScaler.fit(city, regions=city.region_ids[:4])
    ds = STInstructionDataset(city, scaler, regions=city.region_ids[4:], stride=24, days=2, weeks=3,
                              time=slice(21 * 24, None))  # fmt: skip
    fmt = ChatFormatter(None)
    tok = train_tokenizer(["\n".join(fmt(ds[i]["conversation"])) for i in range(4)], vocab_size=400)
    ids = add_st_tokens(tok)
    text = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=len(tok))  # fmt: skip
    cfg = STLlamaConfig(text_config=text, **ids.as_config(),
                        st_encoder_config={"num_tokens": 2, "days": 2, "weeks": 3})  # fmt: skip
    model = STLlamaForCausalLM(cfg).eval()
    pred = predict(model, tok, ds, scaler, batch_size=8, progress=False)
    ha = historical_average(city, ds.starts, ds.region_idx, 12, 12, weeks=3)
    np.testing.assert_allclose(pred, ha, rtol=1e-4, atol=1e-3)
