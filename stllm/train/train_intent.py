"""Population model for on-device intent prediction: ``stllm train-intent [--data tokyo|nyc|synthetic|FILE] ...``.

The same machinery as ``train_mem.py`` (model/LoRA/trainer arguments, STTrainer checkpoints) on next-intent
samples (:mod:`stllm.data.intent`): only the *population* users' earlier days train; held-out users and every
user's later days never do. The checkpoint records the split and what trained (``intent_data.json``), and
``stllm eval intent`` refuses targets outside the held-out part. Without ``--model_name_or_path`` the backbone is a
Llama of ``--tiny_preset`` size built from its config with an offline BPE tokenizer.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass, field

import numpy as np

from stllm.data.intent import (
    INTENT_FEATURES,
    INTENTS,
    IntentCollator,
    PreparedIntent,
    dataset_targets,
    prepare_intent,
    resolve_events,
)
from stllm.models.intent import INTENT_DATA_FILE, STLlamaForIntent, intent_config_kwargs, prior_logit_offsets
from stllm.tokens import INTENT_PRE_TOKEN, add_intent_token
from stllm.train.arguments import ModelArguments, STTrainingArguments
from stllm.train.checks import POSITIVE, check_fields, rule
from stllm.train.train_mem import (
    build_tiny_model,
    claim_run_dir,
    fit_and_save,
    ready_for_training,
    run_training_cli,
    start_run,
    subsample,
)
from stllm.train.trainer import STTrainer

logger = logging.getLogger("stllm")
TRAINED_PARTS = ("population_train",)


@dataclass
class IntentDataArguments:
    data: str = field(default="synthetic", metadata={"help": "Events: 'synthetic' (embedded default), 'tokyo' "
                      "(../shared/data/llmob_tokyo, 2019 users), 'nyc' (../shared/data/foursquare_nyc) or an "
                      "LLMob-format CSV."})
    data_root: str | None = field(default=None, metadata={"help": "Where real data lives (default ../shared/data)."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the population / held-out user draw."})
    heldout_frac: float = field(default=0.3, metadata={"help": "Fraction of users held out from the population."})
    test_frac: float = field(default=0.2, metadata={"help": "Fraction of each user's active days held out (last)."})
    heldout_test_frac: float | None = field(default=None, metadata={"help": "Held-out users only: fraction of their "
                                            "active days held out (default --test_frac; population users unchanged)."})
    history: int = field(default=8, metadata={"help": "Recent events in each prompt."})
    head_dim: int = field(default=32, metadata={"help": "Width of the intent head."})
    synthetic_seed: int = field(default=0, metadata={"help": "Seed of the synthetic events."})
    synthetic_users: int = field(default=40, metadata={"help": "Users of the synthetic events."})
    tokenizer_vocab: int = field(default=1000, metadata={"help": "BPE vocabulary of the offline tokenizer (tiny)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many samples."})
    logit_adjust: float = field(default=0.0, metadata={"help": "Logit-adjusted loss (Menon et al. 2021): the "
                                "cross-entropy scores logits + TAU * log(prior), prior = intent shares of the training "
                                "targets; predictions use the plain logits. 0 = plain cross-entropy."})

    def __post_init__(self):
        check_fields(self, [*(rule(k, POSITIVE) for k in ("history", "head_dim", "synthetic_users", "tokenizer_vocab")),
                            rule("max_train_samples", POSITIVE, optional=True)])
        for name in ("heldout_frac", "test_frac", "heldout_test_frac"):
            if getattr(self, name) is not None and not 0 < getattr(self, name) < 1:
                raise ValueError(f"--{name} must be in (0, 1), got {getattr(self, name)}")


def prepare_from_args(data_args: IntentDataArguments) -> PreparedIntent:
    log = resolve_events(data_args.data, data_args.synthetic_seed, data_args.synthetic_users, data_args.data_root)
    return prepare_intent(log, heldout_frac=data_args.heldout_frac, test_frac=data_args.test_frac,
                          seed=data_args.split_seed, heldout_test_frac=data_args.heldout_test_frac)


def build_intent_model(model_args: ModelArguments, texts: list[str], vocab: int, attn: str, head_dim: int = 32):
    """A pretrained backbone wrapped as :class:`STLlamaForIntent`, or a ``--tiny_preset`` Llama from its config."""
    kwargs = intent_config_kwargs(len(INTENTS), len(INTENT_FEATURES), head_dim)
    if model_args.model_name_or_path:
        model, tokenizer = STLlamaForIntent.from_backbone(
            model_args.model_name_or_path, attn_implementation=model_args.attn_implementation or attn, **kwargs)
        model.config.intent_pre_token_id = add_intent_token(tokenizer, model)
        return model, tokenizer
    base, tokenizer = build_tiny_model(texts, model_args, vocab, attn,
                                       extra_tokens={"intent_pre_token_id": INTENT_PRE_TOKEN}, **kwargs)
    return STLlamaForIntent(base.config, backbone=base.backbone), tokenizer


def train_intent(model_args: ModelArguments, data_args: IntentDataArguments,
                 training_args: STTrainingArguments) -> STTrainer:
    """Prepare the split, train the population model on population users' earlier days, save; returns the trainer."""
    rt = start_run(training_args)
    with claim_run_dir(training_args):
        data = prepare_from_args(data_args)
        dataset = data.dataset(*TRAINED_PARTS, history=data_args.history)
        if len(dataset) == 0:
            raise ValueError(f"{data.log.source}: no population training targets (check --heldout_frac/--test_frac)")
        if training_args.process_index == 0:
            logger.warning("intent training: %d samples from %d population users (%d held out)", len(dataset),
                           len(data.split.population_users), len(data.split.heldout_users))
        picks = np.linspace(0, len(dataset) - 1, num=min(len(dataset), 400)).astype(int)
        model, tokenizer = build_intent_model(model_args, [dataset.texts[i] for i in picks],
                                              data_args.tokenizer_vocab, rt.attn_implementation, data_args.head_dim)
        train_set = subsample(dataset, data_args.max_train_samples, training_args.seed)
        if data_args.logit_adjust:  # the prior of what trains, never of held-out users or later days
            model.config.intent_loss_offsets = prior_logit_offsets(dataset_targets(train_set), len(INTENTS),
                                                                   data_args.logit_adjust)
        model = ready_for_training(model, model_args, training_args, rt)
        record = {**asdict(data_args), "source": data.log.source, "split": json.loads(data.split.to_json()),
                  "trained_parts": list(TRAINED_PARTS), "n_samples": len(train_set), "intents": list(INTENTS),
                  "features": list(INTENT_FEATURES)}
        return fit_and_save(model, tokenizer, training_args, train_set, IntentCollator(tokenizer),
                            {INTENT_DATA_FILE: json.dumps(record, indent=1)})


def main(argv: list[str] | None = None) -> int:
    return run_training_cli(argv, train_intent, data_class=IntentDataArguments, name="train-intent")


if __name__ == "__main__":
    sys.exit(main())
