"""Batched single-pass prediction: equals per-sample forwards, inverse-scales, streams and resumes."""

import json

import numpy as np
import pytest
import torch
from transformers import LlamaConfig

from stllm import STLlamaConfig, STLlamaForCausalLM
from stllm.data import STDataCollator, STInstructionDataset, STScaler, synthetic_city, train_tokenizer
from stllm.data.prompts import ChatFormatter
from stllm.eval.predict import predict
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


def test_events_give_probabilities():
    model, tok, ds, scaler = _setup("event")
    prob = predict(model, tok, ds, scaler, batch_size=8, progress=False)
    assert prob.shape[-1] == ds.city.n_channels and ((prob >= 0) & (prob <= 1)).all()


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
