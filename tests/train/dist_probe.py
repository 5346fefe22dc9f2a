"""Run under ``torchrun``: train with train_mem's real code path and write, per rank, what it saw.

The test reads ``rank<k>.json``: world size, whether DeepSpeed drove the step (and which ZeRO stage),
whether this rank saves, and the ids of the samples this rank trained on.
"""

import json
import sys
from pathlib import Path

from stllm.data import STDataCollator
from stllm.train.arguments import parse_args
from stllm.train.train_mem import release_trainer, shutdown_distributed, train

seen: list[str] = []
_collate = STDataCollator.__call__


def recording_collate(self, samples):
    seen.extend(s["id"] for s in samples)  # only training batches go through the collator
    return _collate(self, samples)


STDataCollator.__call__ = recording_collate

if __name__ == "__main__":
    report_dir, argv = Path(sys.argv[1]), sys.argv[2:]
    trainer = train(*parse_args(argv))
    engine = trainer.model_wrapped
    stage = None
    if trainer.is_deepspeed_enabled:
        stage = trainer.accelerator.state.deepspeed_plugin.zero_stage
    rank = trainer.args.process_index
    report = {
        "rank": rank,
        "world_size": trainer.args.world_size,
        "deepspeed": trainer.is_deepspeed_enabled,
        "engine": type(engine).__name__,
        "zero_stage": stage,
        "should_save": trainer.args.should_save,
        "seen": seen,
        "steps": trainer.state.global_step,
    }
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / f"rank{rank}.json").write_text(json.dumps(report))
    release_trainer(trainer)  # the same exit path as stllm train: nothing collective left to teardown
    del trainer, engine
    shutdown_distributed()
