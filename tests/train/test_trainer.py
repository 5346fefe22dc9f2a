"""STTrainer saves all-or-nothing: a save that fails midway (disk full) leaves the previous model
loadable and identical, a new checkpoint directory absent, and no staging directory behind."""

from unittest import mock

import pytest
import torch
from model_fixtures import make_batch, tiny_model, tiny_word_tokenizer
from transformers import TrainingArguments

from stllm import STLlamaForCausalLM
from stllm.models.lora import add_lora
from stllm.train.trainer import STTrainer


def _trainer(model, out, scaler="v1") -> STTrainer:
    args = TrainingArguments(output_dir=str(out), report_to="none", use_cpu=True, disable_tqdm=True)
    return STTrainer(model=model, args=args, processing_class=tiny_word_tokenizer(), artifacts={"scaler.json": scaler})


def _disk_full_after_a_partial_write(tensors, filename, metadata=None):
    with open(filename, "wb") as f:
        f.write(b"\0" * 64)
    raise OSError(28, "No space left on device")


def _leftovers(*dirs):
    return [p for d in dirs for p in d.iterdir() if "saving" in p.name]


def _state(path):
    return STLlamaForCausalLM.from_pretrained(path).state_dict()


def test_failed_save_keeps_the_previous_model(tmp_path):
    run = tmp_path / "run"
    trainer = _trainer(tiny_model(), run)
    trainer.save_model()
    before, config = _state(run), (run / "config.json").read_bytes()
    with torch.no_grad():
        for p in trainer.model.parameters():
            p.add_(1.0)
    trainer.model.config.reg_loss_weight = 0.25  # the new config.json would differ
    trainer.artifacts["scaler.json"] = "v2"
    with mock.patch("transformers.modeling_utils.safe_save_file", _disk_full_after_a_partial_write):
        with pytest.raises(OSError, match="No space left"):
            trainer.save_model()
        with pytest.raises(OSError, match="No space left"):  # a new checkpoint-N directory
            trainer.save_model(str(run / "checkpoint-7"))
    after = _state(run)
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert (run / "config.json").read_bytes() == config and (run / "scaler.json").read_text() == "v1"
    assert not (run / "checkpoint-7").exists()
    assert not _leftovers(run, tmp_path)
    # the same save with room on the disk replaces everything
    trainer.save_model()
    new = _state(run)
    assert all(torch.equal(new[k], v.detach()) for k, v in trainer.model.state_dict().items())
    assert (run / "scaler.json").read_text() == "v2" and not _leftovers(run, tmp_path)


def test_full_save_over_a_lora_save_removes_the_stale_adapter(tmp_path):
    run = tmp_path / "run"
    _trainer(add_lora(tiny_model(seed=1), r=4, dropout=0.0), run).save_model()
    assert (run / "adapter_config.json").is_file() and (run / "st_base.safetensors").is_file()
    full = tiny_model(seed=2)
    _trainer(full, run).save_model()
    assert not (run / "adapter_config.json").exists() and not (run / "st_base.safetensors").exists()
    b = make_batch()
    with torch.no_grad():
        torch.testing.assert_close(STLlamaForCausalLM.from_pretrained(run)(**b).logits, full(**b).logits)


class Plant:
    """Unpickling this calls ``open(marker, "w")``: the marker file exists iff the pickle code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_deepspeed_resume_reads_shards_weights_only(tmp_path, monkeypatch):
    """A DeepSpeed resume reads shards through the engine's ``torch.load(weights_only=False)``; here the
    engine's load (standing in for transformers' resume) runs inside STTrainer.train."""
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.checkpoint_engine import torch_checkpoint_engine as engine_module
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from transformers import Trainer

    marker, planted, good = tmp_path / "pwned", tmp_path / "planted_optim_states.pt", tmp_path / "good.pt"
    torch.save({"w": torch.ones(2), "plant": Plant(marker)}, planted, _use_new_zipfile_serialization=False)
    torch.save({"w": torch.ones(2), "zero_stage": ZeroStageEnum(2)}, good, _use_new_zipfile_serialization=False)
    loaded = []
    monkeypatch.setattr(Trainer, "train", lambda self, resume, *a, **k: loaded.append(
        [engine_module.TorchCheckpointEngine().load(str(p)) for p in (good, *([planted] * (resume == "bad")))]))
    trainer = _trainer(tiny_model(), tmp_path / "run")
    trainer.is_deepspeed_enabled = True
    trainer.train(resume_from_checkpoint="good")  # DeepSpeed's own data classes load
    assert loaded[0][0]["zero_stage"] == 2 and torch.equal(loaded[0][0]["w"], torch.ones(2))
    with pytest.raises(PermissionError, match="planted_optim_states.pt: it pickles .*io.open.*trust_checkpoint=True"):
        trainer.train(resume_from_checkpoint="bad")
    assert not marker.exists() and engine_module.torch is torch
