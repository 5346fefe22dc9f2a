"""``stllm export``: the exported folder evaluates like its run, ZeRO shards are read without running
their pickles, the output directory is claimed, and LoRA checkpoints export to the same predictions."""

import json

import pytest
import torch
from model_fixtures import tiny_model, tiny_word_tokenizer, trained_lora

from stllm import STLlamaForCausalLM
from stllm.cli import main as cli
from stllm.models.checkpoint import save_lora_extras
from stllm.outdir import held_artifact
from stllm.train.arguments import DataArguments, parse_args
from stllm.train.export import export_checkpoint
from stllm.train.train_mem import train

RUN = ["--synthetic_regions", "6", "--synthetic_days", "6", "--per_device_train_batch_size", "8", "--context_days", "1",
       "--context_weeks", "0", "--val_fraction", "0", "--max_steps", "2", "--save_strategy", "steps",
       "--save_steps", "2", "--seed", "3", "--disable_tqdm", "true"]  # fmt: skip
# what evaluation reads besides the weights (stllm.eval.zero_shot and AutoTokenizer)
EVAL_FILES = ("data_args.json", "scaler.json", "split.json", "tokenizer.json", "tokenizer_config.json",
              "chat_template.jinja", "generation_config.json")  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny full-weights training run on 6 regions (not the default city) with its checkpoint-2."""
    out = tmp_path_factory.mktemp("run") / "out"
    train(*parse_args(["--output_dir", str(out), *RUN]))
    return out


def test_export_carries_every_file_evaluation_reads(run_dir, tmp_path):
    from stllm.eval.zero_shot import _data_args

    ckpt = run_dir / "checkpoint-2"
    out = export_checkpoint(ckpt, tmp_path / "exported")
    for name in EVAL_FILES:
        assert (ckpt / name).is_file(), name  # the run wrote it ...
        assert (out / name).read_bytes() == (ckpt / name).read_bytes(), name  # ... and the export carries it
    assert _data_args(out, {}) == _data_args(ckpt, {})
    assert _data_args(out, {}).synthetic_regions == 6 != DataArguments().synthetic_regions
    # weights: identical; training state (optimizer, RNG, pickled arguments) is not a model's
    a, b = STLlamaForCausalLM.from_pretrained(out).state_dict(), STLlamaForCausalLM.from_pretrained(ckpt).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("optimizer.pt", "rng_state.pth", "training_args.bin", "trainer_state.json"):
        assert (ckpt / name).is_file() and not (out / name).exists(), name
    assert held_artifact(out) == "model"


def test_exported_folder_evaluates_like_its_run(run_dir, tmp_path):
    from stllm.eval.zero_shot import evaluate

    ckpt = run_dir / "checkpoint-2"
    out = export_checkpoint(ckpt, tmp_path / "exported")
    kw = dict(baselines=["last_value"], supervised=False, ridge=False, progress=False, plots=False, batch_size=64)
    a = evaluate(ckpt, tmp_path / "eval-run", **kw)
    b = evaluate(out, tmp_path / "eval-exported", **kw)
    assert a.metrics == b.metrics
    meta = json.loads((tmp_path / "eval-exported" / "metrics.json").read_text())
    assert len(meta["regions"]) < 6  # the run's held-out regions of its own 6-region city


def test_export_refuses_unsafe_destinations(run_dir, tmp_path):
    ckpt = run_dir / "checkpoint-2"
    with pytest.raises(FileExistsError, match="training run"):
        export_checkpoint(ckpt, run_dir)
    for inside in (ckpt, ckpt / "exported", ckpt / "a" / "b"):
        with pytest.raises(ValueError, match="inside the checkpoint"):
            export_checkpoint(ckpt, inside)
    assert not (ckpt / "exported").exists() and not (ckpt / "a").exists()
    (tmp_path / "enc").mkdir()
    (tmp_path / "enc" / "encoder_config.json").write_text('{"kind": "st"}')
    with pytest.raises(FileExistsError, match="encoder"):
        export_checkpoint(ckpt, tmp_path / "enc", overwrite=True)
    # an earlier export: only with overwrite, and then replaced
    out = export_checkpoint(ckpt, tmp_path / "exported")
    (out / "scaler.json").write_text("stale")
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_checkpoint(ckpt, out)
    assert (out / "scaler.json").read_text() == "stale"
    export_checkpoint(ckpt, out, overwrite=True)
    assert (out / "scaler.json").read_bytes() == (ckpt / "scaler.json").read_bytes()
    assert not list(out.glob(".*saving*")) and not list(tmp_path.glob(".*saving*"))


def test_cli_export_succeeds_and_refusals_are_user_errors(run_dir, tmp_path, capsys):
    ckpt = run_dir / "checkpoint-2"
    assert cli(["export", str(ckpt), str(tmp_path / "exported")]) == 0
    assert (tmp_path / "exported" / "model.safetensors").is_file()
    assert cli(["export", str(ckpt), str(tmp_path / "exported")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli(["export", str(ckpt), str(tmp_path / "exported"), "--overwrite"]) == 0
    assert cli(["export", str(ckpt), str(ckpt / "sub")]) == 2
    assert "inside the checkpoint" in capsys.readouterr().err and not (ckpt / "sub").exists()


# -- ZeRO shards: a planted pickle must not run ---------------------------------------------------------


class Plant:
    """Unpickling this calls ``open(marker, "w")``: the marker file exists iff the pickle code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _planted_zero_checkpoint(root, marker, where: str):
    ckpt = root / "checkpoint-1"
    tiny_model().save_pretrained(ckpt)
    shards = ckpt / "global_step1"
    shards.mkdir()
    (ckpt / "latest").write_text("global_step1")
    model_states = {"buffer_names": [], "module": {}, "param_shapes": [{}], "shared_params": {}, "ds_version": "0"}
    optim_states = {"optimizer_state_dict": {"zero_stage": 2, "partition_count": 1}}
    if where == "model":
        model_states["plant"] = Plant(marker)
    else:
        optim_states["optimizer_state_dict"]["plant"] = Plant(marker)
    torch.save(model_states, shards / "mp_rank_00_model_states.pt")
    torch.save(optim_states, shards / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    return ckpt, shards / ("mp_rank_00_model_states.pt" if where == "model" else
                           "zero_pp_rank_0_mp_rank_00_optim_states.pt")  # fmt: skip


@pytest.mark.parametrize("where", ["model", "optim"])
def test_planted_pickle_in_zero_shards_is_refused_without_running(tmp_path, where):
    pytest.importorskip("deepspeed")
    marker = tmp_path / "pwned"
    ckpt, planted = _planted_zero_checkpoint(tmp_path, marker, where)
    with pytest.raises(PermissionError, match="--trust_checkpoint") as err:
        export_checkpoint(ckpt, tmp_path / "exported")
    assert str(planted) in str(err.value) and "io.open" in str(err.value)  # the planted callable is named
    assert not marker.exists()
    assert not (tmp_path / "exported").exists()


def test_cli_refuses_planted_shards_as_a_user_error(tmp_path, capsys):
    pytest.importorskip("deepspeed")
    marker = tmp_path / "pwned"
    ckpt, planted = _planted_zero_checkpoint(tmp_path, marker, "model")
    capsys.readouterr()
    assert cli(["export", str(ckpt), str(tmp_path / "exported")]) == 2
    err = capsys.readouterr().err
    assert "stllm export: error:" in err and planted.name in err and "--trust_checkpoint" in err
    assert not marker.exists()


def test_latest_tag_outside_the_checkpoint_is_refused(tmp_path):
    ckpt = tmp_path / "ckpt"
    tiny_model().save_pretrained(ckpt)
    (tmp_path / "global_step9").mkdir()
    (ckpt / "latest").write_text("../global_step9")
    with pytest.raises(ValueError, match="latest"):
        export_checkpoint(ckpt, tmp_path / "exported")


# -- LoRA checkpoints: exported predictions equal the unmerged model's -----------------------------------


def _lora_checkpoint(kind: str, path):
    peft_model, b = trained_lora(kind)
    peft_model.save_pretrained(path)
    save_lora_extras(peft_model, path)
    tiny_word_tokenizer().save_pretrained(path)
    (path / "scaler.json").write_text('{"mean": [1.0], "std": [2.0]}')
    (path / "data_args.json").write_text('{"synthetic_regions": 5}')
    return peft_model, b


@pytest.mark.parametrize("kind", ["llama", "gpt2"])  # untied (merged on export) and tied (kept as LoRA)
def test_lora_checkpoint_exports_to_the_same_predictions(tmp_path, kind):
    peft_model, b = _lora_checkpoint(kind, tmp_path / "ckpt")
    with torch.no_grad():
        ref = peft_model(**b)
    out = export_checkpoint(tmp_path / "ckpt", tmp_path / "exported")
    back = STLlamaForCausalLM.from_pretrained(out)
    with torch.no_grad():
        got = back(**b)
    torch.testing.assert_close(got.logits, ref.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.reg_pred, ref.reg_pred, atol=1e-5, rtol=1e-5)
    if kind == "llama":  # merged: plain weights, no adapter left
        assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    for name in ("tokenizer.json", "tokenizer_config.json", "scaler.json", "data_args.json"):
        assert (out / name).read_bytes() == (tmp_path / "ckpt" / name).read_bytes(), name
