"""Intent model: the head scores each row from its own query and features only, the query is the decoder's hidden
state at <intent_pre> whatever the padding, bad inputs are named, the traceable path equals forward, and a saved
model loads back equal."""

import numpy as np
import pytest
import torch
from transformers import LlamaConfig

from stllm.models.configuration import STLlamaConfig
from stllm.models.intent import IntentHead, IntentLogits, STLlamaForIntent, intent_config_kwargs, prior_logit_offsets

SLOT = 101


def tiny_intent_model(seed: int = 0) -> STLlamaForIntent:
    torch.manual_seed(seed)
    text = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                       intermediate_size=64, vocab_size=110, pad_token_id=0)
    config = STLlamaConfig(text_config=text, intent_pre_token_id=SLOT, **intent_config_kwargs(9, 7, 16))
    config._attn_implementation = "sdpa"
    return STLlamaForIntent(config).eval()


def test_head_rows_are_independent_and_shapes_named():
    torch.manual_seed(0)
    head = IntentHead(32, 9, 7, 16)
    q, f = torch.randn(5, 32), torch.randn(5, 9, 7)
    full = head(q, f)
    assert full.shape == (5, 9)
    for i in range(5):
        torch.testing.assert_close(head(q[i : i + 1], f[i : i + 1]), full[i : i + 1])
    with pytest.raises(ValueError, match=r"intent_features must be \(B, 9, 7\)"):
        head(q, torch.randn(5, 8, 7))


def test_query_is_hidden_at_slot_and_padding_does_not_change_it():
    model = tiny_intent_model()
    a = torch.tensor([[5, 6, 7, 8, SLOT]])
    b = torch.tensor([[9, 10, SLOT]])
    feats = torch.randn(2, 9, 7)
    with torch.no_grad():
        hidden = model.backbone.get_decoder()(input_ids=a).last_hidden_state[0, -1]
        torch.testing.assert_close(model.intent_query(a), hidden[None])
        alone = [model(x, intent_features=feats[i : i + 1]).intent_logits for i, x in enumerate((a, b))]
        padded = torch.tensor([[5, 6, 7, 8, SLOT], [9, 10, SLOT, 0, 0]])
        mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
        both = model(padded, mask, feats).intent_logits
        torch.testing.assert_close(both, torch.cat(alone), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(IntentLogits(model)(padded, mask, feats), both)


def test_bad_inputs_named():
    model = tiny_intent_model()
    with pytest.raises(ValueError, match="row 1 has 0"):
        model(torch.tensor([[1, SLOT], [1, 2]]), intent_features=torch.randn(2, 9, 7))
    with pytest.raises(ValueError, match="intent_features .* are required"):
        model(torch.tensor([[1, SLOT]]))
    with pytest.raises(ValueError, match="intent_targets has shape"):
        model(torch.tensor([[1, SLOT]]), intent_features=torch.randn(1, 9, 7), intent_targets=torch.tensor([1, 2]))
    config = tiny_intent_model().config
    config.intent_classes = None
    with pytest.raises(ValueError, match="config.intent_classes"):
        STLlamaForIntent(config)


def test_loss_is_cross_entropy_and_save_load_round_trip(tmp_path):
    model = tiny_intent_model()
    ids, feats, y = torch.tensor([[3, 4, SLOT], [5, 6, SLOT]]), torch.randn(2, 9, 7), torch.tensor([2, 7])
    out = model(ids, intent_features=feats, intent_targets=y)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.intent_logits, y))
    model.save_pretrained(tmp_path)
    back = STLlamaForIntent.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(back(ids, intent_features=feats).intent_logits, out.intent_logits)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_wraps_a_saved_backbone_with_the_intent_token(tmp_path, kind):
    """--model_name_or_path: any saved causal LM becomes an intent model; <intent_pre> is one added token."""
    from model_fixtures import tiny_text_config, tiny_word_tokenizer
    from transformers import AutoModelForCausalLM

    from stllm.train.arguments import ModelArguments
    from stllm.train.train_intent import build_intent_model

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(tiny_text_config(kind)).save_pretrained(tmp_path / kind)
    tiny_word_tokenizer().save_pretrained(tmp_path / kind)
    model, tok = build_intent_model(ModelArguments(model_name_or_path=str(tmp_path / kind)), [], 0, "sdpa", 8)
    slot = model.config.intent_pre_token_id
    assert tok.convert_tokens_to_ids("<intent_pre>") == slot == len(tok) - 1
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    ids = torch.tensor([[5, 6, slot]])
    logits = model.eval()(ids, intent_features=torch.randn(1, 9, 7)).intent_logits
    assert logits.shape == (1, 9) and torch.isfinite(logits).all()


def test_prior_logit_offsets_hand_worked_and_checked():
    # targets 0,0,0,1 over 3 intents, one pseudo count each: shares (4, 2, 1) / 7
    got = prior_logit_offsets(np.array([0, 0, 0, 1]), 3, 0.5)
    assert np.allclose(got, [0.5 * np.log(4 / 7), 0.5 * np.log(2 / 7), 0.5 * np.log(1 / 7)])
    assert prior_logit_offsets(np.array([1, 1]), 2, 0.0) == [0.0, 0.0]
    with pytest.raises(ValueError, match=r"intent ids in \[0, 2\)"):
        prior_logit_offsets(np.array([0, 2]), 2, 1.0)


def test_adjusted_loss_scores_shifted_logits_and_predicts_plain_ones():
    model = tiny_intent_model()
    ids, feats, y = torch.tensor([[3, 4, SLOT], [5, 6, SLOT]]), torch.randn(2, 9, 7), torch.tensor([2, 7])
    plain = model(ids, intent_features=feats, intent_targets=y)
    offsets = torch.linspace(-2.0, 0.0, 9)
    model.config.intent_loss_offsets = offsets.tolist()
    adjusted = model(ids, intent_features=feats, intent_targets=y)
    torch.testing.assert_close(adjusted.intent_logits, plain.intent_logits)  # predictions unchanged
    torch.testing.assert_close(adjusted.loss, torch.nn.functional.cross_entropy(plain.intent_logits + offsets, y))
    model.config.intent_loss_offsets = [0.0] * 8
    with pytest.raises(ValueError, match="8 values for 9 intents"):
        model(ids, intent_features=feats, intent_targets=y)


def test_logit_adjusted_training_gives_the_rare_intent_recall():
    """Intent 1 is 10% of the targets and its feature x ~ N(1.5, 1) against N(0, 1) for intent 0. Plain cross-entropy
    learns the posterior, whose threshold sits near x = 0.75 + ln 9 / 1.5 = 2.2 (rare recall ~0.24); the
    logit-adjusted loss (tau 1, the training prior) learns the prior-free threshold near 0.75 (recall ~0.77)."""
    gen = torch.Generator().manual_seed(0)

    def sample(n):
        y = (torch.rand(n, generator=gen) < 0.1).long()
        feats = torch.zeros(n, 9, 7)
        feats[:, 1, 0] = torch.randn(n, generator=gen) + 1.5 * y
        return feats, y

    feats, y = sample(400)
    test_feats, test_y = sample(2000)
    ids = torch.tensor([[3, 4, SLOT]]).expand(len(y), 3)
    recall = {}
    for tau in (0.0, 1.0):
        model = tiny_intent_model().train()
        if tau:
            model.config.intent_loss_offsets = prior_logit_offsets(y.numpy(), 9, tau)
        opt = torch.optim.Adam(model.parameters(), lr=5e-2)
        for _ in range(80):
            loss = model(ids, intent_features=feats, intent_targets=y).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            pred = model.eval()(ids[:1].expand(len(test_y), 3), intent_features=test_feats).intent_logits.argmax(-1)
        recall[tau] = (pred[test_y == 1] == 1).float().mean().item()
    assert recall[0.0] < 0.45 and recall[1.0] > 0.6, recall
