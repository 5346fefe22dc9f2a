"""Next-POI instruction tuning: ``torchrun stllm/train/train_poi.py --checkins NYC_val.csv ...`` (or
``stllm train-poi``).

The same machinery as ``train_mem.py`` (model/LoRA/DeepSpeed/trainer arguments, STTrainer checkpoints),
on check-ins instead of city windows: each sample is a user's recent visits with ``<GEO>`` slots and
the ``<POI_PRE>`` slot where the candidate head scores every POI of the training table. The checkpoint
records which table it was trained on (``poi_data.json``), so evaluation can refuse another one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from dataclasses import asdict, dataclass, field

import numpy as np

from stllm.data.checkins import CheckIns, chronological_split, load_checkins, synthetic_checkins, user_trajectories
from stllm.data.next_poi import NextPOICollator, NextPOIDataset, next_poi_train_task
from stllm.data.prompts import tokenizer_corpus
from stllm.eval.poi_baselines import MarkovTransition
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
POI_DATA_FILE = "poi_data.json"


@dataclass
class POIDataArguments:
    checkins: str = field(
        default="synthetic",
        metadata={"help": "Training check-ins: a Foursquare-style CSV (e.g. ../shared/data/foursquare_nyc/NYC_val.csv) "
                  "or 'synthetic' (the earlier 80%% of synthetic_checkins by time; the rest is its test part)."},
    )
    synthetic_seed: int = field(default=0, metadata={"help": "Seed of the synthetic check-ins."})
    synthetic_users: int = field(default=40, metadata={"help": "Users of the synthetic check-ins."})
    synthetic_pois: int = field(default=150, metadata={"help": "POIs of the synthetic check-ins."})
    synthetic_days: int = field(default=28, metadata={"help": "Days of the synthetic check-ins."})
    history: int = field(default=100, metadata={"help": "Earlier check-ins per sample seen by the relation features."})
    prompt_visits: int = field(default=8, metadata={"help": "Most recent check-ins written into the prompt."})
    tokenizer_vocab: int = field(default=2000, metadata={"help": "BPE vocabulary of the offline tokenizer (tiny)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many samples."})

    def __post_init__(self):
        counts = ("synthetic_users", "synthetic_pois", "synthetic_days", "history", "prompt_visits", "tokenizer_vocab")
        check_fields(self, [*(rule(k, POSITIVE) for k in counts), rule("max_train_samples", POSITIVE, optional=True)])

    def synthetic_kwargs(self) -> dict:
        return dict(seed=self.synthetic_seed, n_users=self.synthetic_users, n_pois=self.synthetic_pois,
                    days=self.synthetic_days)  # fmt: skip


def resolve_checkins(spec: str, **synthetic) -> tuple[CheckIns, CheckIns | None]:
    """``(train, test)``: a CSV path gives (its check-ins, None); 'synthetic' gives the chronological
    80/20 split of :func:`synthetic_checkins` (``synthetic``: its keyword arguments)."""
    if spec == "synthetic":
        train, test = chronological_split(synthetic_checkins(**synthetic), frac=0.8)
        return train.compacted(), test.compacted()
    return load_checkins(spec), None


def table_fingerprint(checkins: CheckIns) -> str:
    """SHA-256 of the POI table (ids, coordinates, categories): evaluation must score the same candidates."""
    h = hashlib.sha256()
    for a in (checkins.poi_ids.astype(str), checkins.categories.astype(str)):
        h.update("\n".join(a.tolist()).encode())
    for a in (checkins.poi_lat, checkins.poi_lon, checkins.poi_category):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def build_poi_model(model_args: ModelArguments, data_args: POIDataArguments, dataset: NextPOIDataset, attn: str):
    """A pretrained backbone wrapped with the stllm modules, or a tiny Llama with an offline tokenizer."""
    common = dict(projector_type=model_args.projector_type, lm_loss_weight=model_args.lm_loss_weight,
                  poi_loss_weight=model_args.poi_loss_weight)  # fmt: skip
    if model_args.model_name_or_path:
        return STLlamaForCausalLM.from_backbone(
            model_args.model_name_or_path, attn_implementation=model_args.attn_implementation or attn, **common
        )
    texts = tokenizer_corpus(dataset, 400)
    texts += dataset.task.checkins.categories.tolist()  # every category name, for the candidate embeddings
    return build_tiny_model(texts, model_args, data_args.tokenizer_vocab, attn, **common)


def train_next_poi(model_args: ModelArguments, data_args: POIDataArguments,
                   training_args: STTrainingArguments) -> STTrainer:
    """Load check-ins, build samples and the model, train, save the checkpoint; returns the trainer."""
    rt = start_run(training_args)
    with claim_run_dir(training_args):
        return _train_next_poi(model_args, data_args, training_args, rt)


def _train_next_poi(model_args: ModelArguments, data_args: POIDataArguments, training_args: STTrainingArguments,
                    rt) -> STTrainer:
    checkins, _ = resolve_checkins(data_args.checkins, **data_args.synthetic_kwargs())
    _, skipped = user_trajectories(checkins, min_visits=2)
    task = next_poi_train_task(checkins, history=data_args.history)
    if len(task) == 0:
        raise ValueError(f"{data_args.checkins}: no user has two check-ins; nothing to train on")
    if training_args.process_index == 0:
        logger.warning("next-POI training: %d samples from %d users, %d POIs (%d users with < 2 check-ins skipped)",
                       len(task), len(np.unique(checkins.user[task.rows])), checkins.n_pois, skipped)
    dataset = NextPOIDataset(task, prompt_visits=data_args.prompt_visits)
    model, tokenizer = build_poi_model(model_args, data_args, dataset, rt.attn_implementation)
    model = ready_for_training(model, model_args, training_args, rt)
    train_set = subsample(dataset, data_args.max_train_samples, training_args.seed)
    record = {**asdict(data_args), "source": checkins.source, "n_pois": checkins.n_pois,
              "n_samples": len(train_set), "skipped_users": skipped, "poi_table_sha256": table_fingerprint(checkins)}
    collator = NextPOICollator(tokenizer, checkins, transitions=MarkovTransition().fit(checkins), leave_one_out=True)
    return fit_and_save(model, tokenizer, training_args, train_set, collator,
                        {POI_DATA_FILE: json.dumps(record, indent=2)})


def main(argv: list[str] | None = None) -> int:
    return run_training_cli(argv, train_next_poi, data_class=POIDataArguments, name="train-poi")


if __name__ == "__main__":
    sys.exit(main())
