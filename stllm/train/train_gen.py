"""Daily activity generation tuning: ``stllm train-gen [--data synthetic|tokyo|nyc] ...``.

The same machinery as ``train_mem.py`` (model/LoRA/DeepSpeed/trainer arguments, STTrainer checkpoints), on
activity days: each sample is one training day of one user, the prompt its persona (from the user's training
days) and date, the answer the day's activity lines (:mod:`stllm.data.activity_prompts`). Only training days
are read; the checkpoint records the data, the users and days it trained on and the answer vocabulary
(``activity_data.json``), which generation turns into the constrained decoder and evaluation uses to refuse
requests for trained days.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass, field

from stllm.data.activity import ACTIVITY_DATA, hold_out_last_days, load_activity_split
from stllm.data.activity_prompts import ActivityGenCollator, ActivityGenDataset, answer_vocabulary
from stllm.data.prompts import tokenizer_corpus
from stllm.models import STLlamaForCausalLM
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
ACTIVITY_DATA_FILE = "activity_data.json"


@dataclass
class GenDataArguments:
    data: str = field(default="synthetic", metadata={"help": f"Activity days: one of {', '.join(ACTIVITY_DATA)} "
                                                             "(tokyo: LLMob 2019; nyc: Foursquare NYC)."})
    data_root: str | None = field(default=None, metadata={"help": "Where real data lives (default ../shared/data)."})
    digits: int = field(default=3, metadata={"help": "Decimals of the coordinates the model writes (3: ~100 m)."})
    max_lines: int = field(default=20, metadata={"help": "Most activities a generated day may have."})
    synthetic_seed: int = field(default=0, metadata={"help": "Seed of the synthetic days."})
    tokenizer_vocab: int = field(default=1000, metadata={"help": "BPE vocabulary of the offline tokenizer (tiny)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many training days."})
    val_days: int = field(default=1, metadata={"help": "Each user's last N training days are not trained on but "
                                                       "kept as validation days (users keeping >= 2 days), where "
                                                       "`stllm eval gen --select` picks sampling settings; 0: none."})

    def __post_init__(self):
        check_fields(self, [rule("digits", POSITIVE), rule("max_lines", POSITIVE), rule("tokenizer_vocab", POSITIVE),
                            rule("max_train_samples", POSITIVE, optional=True)])
        if self.val_days < 0:
            raise ValueError(f"--val_days must be >= 0, got {self.val_days}")
        if self.data not in ACTIVITY_DATA:
            raise ValueError(f"--data must be one of {', '.join(ACTIVITY_DATA)}, got {self.data!r}")


def build_gen_model(model_args: ModelArguments, data_args: GenDataArguments, dataset: ActivityGenDataset, attn: str):
    """A pretrained backbone wrapped with the stllm modules, or a tiny Llama with a tokenizer trained offline."""
    common = dict(projector_type=model_args.projector_type, lm_loss_weight=model_args.lm_loss_weight)
    if model_args.model_name_or_path:
        return STLlamaForCausalLM.from_backbone(
            model_args.model_name_or_path, attn_implementation=model_args.attn_implementation or attn, **common)
    return build_tiny_model(tokenizer_corpus(dataset, 2000), model_args, data_args.tokenizer_vocab, attn, **common)


def train_gen(model_args: ModelArguments, data_args: GenDataArguments, training_args: STTrainingArguments
              ) -> STTrainer:
    """Load the training days, build the model, train, save; returns the trainer."""
    rt = start_run(training_args)
    with claim_run_dir(training_args):
        split = load_activity_split(data_args.data, data_args.data_root, seed=data_args.synthetic_seed)
        kept, val = hold_out_last_days(split.train, data_args.val_days)
        dataset = ActivityGenDataset(kept, split.with_coords, data_args.digits)  # test and validation days never enter
        if training_args.process_index == 0:
            logger.warning("activity generation training: %d days of %d users (%s)", len(dataset),
                           len({c.user for c in split.train}), split.name)
        model, tokenizer = build_gen_model(model_args, data_args, dataset, rt.attn_implementation)
        model = ready_for_training(model, model_args, training_args, rt)
        train_set = subsample(dataset, data_args.max_train_samples, training_args.seed)
        used = [kept[i] for i in (train_set.indices if hasattr(train_set, "indices") else range(len(dataset)))]
        cats, places = answer_vocabulary(split.train, split.with_coords, data_args.digits)
        record = {**asdict(data_args), "name": split.name, "with_coords": split.with_coords,
                  "time_resolution_s": split.time_resolution_s, "categories": cats, "places": places,
                  "trained_days": sorted({f"{c.user}/{c.date}" for c in used}), "n_samples": len(train_set),
                  "validation_days": sorted({f"{c.user}/{c.date}" for c in val})}
        return fit_and_save(model, tokenizer, training_args, train_set, ActivityGenCollator(tokenizer),
                            {ACTIVITY_DATA_FILE: json.dumps(record, indent=1)})


def main(argv: list[str] | None = None) -> int:
    return run_training_cli(argv, train_gen, data_class=GenDataArguments, name="train-gen")


if __name__ == "__main__":
    sys.exit(main())
