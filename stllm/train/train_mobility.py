"""Long-term mobility instruction tuning (HuMob): ``stllm train-mobility [--data FILE.csv --base 1 --city B] ...``.

The same machinery as ``train_mem.py`` (model/LoRA/DeepSpeed/trainer arguments, STTrainer checkpoints), on
trajectories: each sample is one user and one window inside days ``0..last_day`` (default 0-59: predict days
45-59 from 0-44, and windows slid back by ``window_stride`` days), with one ``<MOB_PRE>`` slot per target row
where the cell-choice head picks among the user's places (:mod:`stllm.data.mobility`). Days after ``last_day``
never enter training. The checkpoint records the city, the users and the days it trained on
(``mobility_data.json``), and ``stllm eval mobility`` refuses targets inside them. ``--text_answers N`` also
trains the LM, in the same windows, to write the target days as text over the user's top N places (the
generate-based mode, :mod:`stllm.data.mobility_answers`); off by default, as it moves the head's results a little.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict, dataclass, field

import numpy as np

from stllm.data.mobility import (
    MOB_FEATURES,
    MOBILITY_DATA_FILE,
    N_CANDIDATES,
    MobilityCollator,
    MobilityDataset,
    resolve_trajectories,
    training_windows,
)
from stllm.data.mobility_answers import MAX_RUNS
from stllm.data.prompts import tokenizer_corpus
from stllm.models import STLlamaForCausalLM
from stllm.tokens import MOB_PRE_TOKEN, add_mobility_token
from stllm.train.arguments import ModelArguments, STTrainingArguments
from stllm.train.checks import NON_NEGATIVE, POSITIVE, check_fields, rule
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


@dataclass
class MobilityDataArguments:
    data: str = field(
        default="synthetic",
        metadata={"help": "Training trajectories: a HuMob CSV (uid,d,t,x,y[,city], e.g. "
                  "../shared/data/humob24/groundtruth_days0-74_cityBC.csv with --base 1 --city B) or 'synthetic' "
                  "(synthetic_trajectories, city 'S')."},
    )
    base: int | None = field(default=None, metadata={"help": "Cell numbering of --data: 1 (HuMob'24 files, 1..200) "
                                                      "or 0. Required for a CSV; never guessed."})
    city: str | None = field(default=None, metadata={"help": "Keep only this city's rows (the CSV's city column)."})
    last_day: int = field(default=59, metadata={"help": "Last day any training window may touch (targets included)."})
    target_days: int = field(default=15, metadata={"help": "Target days per window."})
    n_windows: int = field(default=4, metadata={"help": "Windows per user, each slid back by --window_stride days."})
    window_stride: int = field(default=5, metadata={"help": "Days between consecutive windows' ends."})
    min_history: int = field(default=20, metadata={"help": "A window needs at least this many history days."})
    candidates: int = field(default=N_CANDIDATES, metadata={"help": "Candidate places per user (most visited cells)."})
    synthetic_seed: int = field(default=0, metadata={"help": "Seed of the synthetic trajectories."})
    synthetic_users: int = field(default=40, metadata={"help": "Users of the synthetic trajectories."})
    tokenizer_vocab: int = field(default=1000, metadata={"help": "BPE vocabulary of the offline tokenizer (tiny)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many samples."})
    text_answers: int = field(default=0, metadata={"help": "Also train the LM to write each window's days as text "
                                                   "over the user's top N places named A, B, ... (the generate-based "
                                                   "mode, stllm eval mobility --decode generate); 0: head only."})
    max_runs: int = field(default=MAX_RUNS, metadata={"help": "Places per day a text answer may hold."})
    heldout_users: int = field(default=0, metadata={"help": "Leave the last N users (by uid) out of training, so "
                                                    "settings such as decoding can be chosen on users the model never "
                                                    "saw (recorded as heldout_users)."})

    def __post_init__(self):
        counts = ("last_day", "target_days", "n_windows", "window_stride", "min_history", "candidates",
                  "synthetic_users", "tokenizer_vocab")
        check_fields(self, [*(rule(k, POSITIVE) for k in (*counts, "max_runs")),
                            rule("max_train_samples", POSITIVE, optional=True),
                            rule("heldout_users", NON_NEGATIVE), rule("text_answers", NON_NEGATIVE)])
        if self.base not in (None, 0, 1):
            raise ValueError(f"--base must be 0 or 1, got {self.base}")


def build_mobility_model(model_args: ModelArguments, data_args: MobilityDataArguments, dataset: MobilityDataset,
                         attn: str):
    """A pretrained backbone wrapped with the stllm modules and the cell-choice head, or a tiny Llama."""
    common = dict(projector_type=model_args.projector_type, lm_loss_weight=model_args.lm_loss_weight,
                  mob_features=len(MOB_FEATURES))  # fmt: skip
    if model_args.model_name_or_path:
        model, tokenizer = STLlamaForCausalLM.from_backbone(
            model_args.model_name_or_path, attn_implementation=model_args.attn_implementation or attn, **common)
        model.config.mob_pre_token_id = add_mobility_token(tokenizer, model)
        return model, tokenizer
    return build_tiny_model(tokenizer_corpus(dataset, 200), model_args, data_args.tokenizer_vocab, attn,
                            extra_tokens={"mob_pre_token_id": MOB_PRE_TOKEN}, **common)


def train_mobility(model_args: ModelArguments, data_args: MobilityDataArguments,
                   training_args: STTrainingArguments) -> STTrainer:
    """Load trajectories, build windows inside days ``0..last_day`` and the model, train, save; returns the trainer."""
    rt = start_run(training_args)
    with claim_run_dir(training_args):
        return _train_mobility(model_args, data_args, training_args, rt)


def _train_mobility(model_args, data_args: MobilityDataArguments, training_args: STTrainingArguments, rt):
    traj = resolve_trajectories(data_args.data, data_args.base, data_args.city, data_args.synthetic_seed,
                                data_args.synthetic_users)
    traj = traj.subset(traj.d <= data_args.last_day)  # later days never reach training, not even as history
    heldout = traj.users[len(traj.users) - data_args.heldout_users:] if data_args.heldout_users else traj.users[:0]
    if data_args.heldout_users >= len(traj.users):
        raise ValueError(f"{traj.source}: --heldout_users {data_args.heldout_users} leaves no training user "
                         f"({len(traj.users)} users)")
    traj = traj.subset(~np.isin(traj.uid, heldout))
    if not len(traj):
        raise ValueError(f"{data_args.data}: field 'd': no rows in days 0..{data_args.last_day}")
    windows = training_windows(data_args.last_day, data_args.target_days, data_args.n_windows,
                               data_args.window_stride, data_args.min_history)
    dataset = MobilityDataset(traj, windows, candidates=data_args.candidates, text_answers=data_args.text_answers,
                              max_runs=data_args.max_runs)
    if len(dataset) == 0:
        raise ValueError(f"{traj.source}: no user has rows in the target days of any training window {windows}")
    if training_args.process_index == 0:
        logger.warning("mobility training: %d samples (%d users x %d windows inside days 0..%d), %d candidates",
                       len(dataset), len(traj.users), len(windows), data_args.last_day, data_args.candidates)
    model, tokenizer = build_mobility_model(model_args, data_args, dataset, rt.attn_implementation)
    model = ready_for_training(model, model_args, training_args, rt)
    train_set = subsample(dataset, data_args.max_train_samples, training_args.seed)
    cities = sorted(set(traj.city.tolist())) if traj.city is not None else []
    record = {**asdict(data_args), "source": traj.source, "cities": cities, "users": traj.users.tolist(),
              "days": [0, data_args.last_day], "windows": [asdict(w) for w in windows], "n_samples": len(train_set),
              "features": list(MOB_FEATURES), "heldout_users": heldout.tolist()}
    return fit_and_save(model, tokenizer, training_args, train_set, MobilityCollator(tokenizer),
                        {MOBILITY_DATA_FILE: json.dumps(record, indent=2)})


def main(argv: list[str] | None = None) -> int:
    return run_training_cli(argv, train_mobility, data_class=MobilityDataArguments, name="train-mobility")


if __name__ == "__main__":
    sys.exit(main())
