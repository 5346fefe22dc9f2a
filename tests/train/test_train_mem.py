"""Stage-2 training on a small synthetic city: losses fall, only trainable weights move, exact resume,
checkpoints reload to the trained predictions, and bad setups are refused."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import set_seed

from stllm import STEncoder, STEncoderConfig, STLlamaForCausalLM, save_encoder
from stllm.data import STDataCollator
from stllm.train.arguments import parse_args
from stllm.train.train_mem import build_model, prepare_data, train

SMALL = ["--synthetic_regions", "8", "--synthetic_days", "6", "--per_device_train_batch_size", "8",
         "--context_days", "1", "--context_weeks", "0", "--val_fraction", "0", "--lr_scheduler_type", "linear",
         "--warmup_steps", "0",
         "--logging_steps", "1", "--save_strategy", "no", "--seed", "7", "--disable_tqdm", "true"]  # fmt: skip


def run(tmp_path, *extra):
    return train(*parse_args(["--output_dir", str(tmp_path), *SMALL, *extra]))


def logged(trainer, key):
    return [h[key] for h in trainer.state.log_history if key in h and "train_runtime" not in h]


def predictions(model, trainer, n=8):
    batch = STDataCollator(trainer.processing_class, st_slots=model.config.st_slots)(
        [trainer.train_dataset[i] for i in range(n)]
    )
    batch.pop("labels")
    with torch.no_grad():
        return model.eval()(**batch)


@pytest.mark.parametrize(
    "task,term,days,steps", [("flow", "reg_loss", "6", "60"), ("event", "cls_loss", "120", "100")]
)
def test_a_few_steps_lower_each_loss_term_and_full_checkpoint_reloads(tmp_path, task, term, days, steps):
    trainer = run(tmp_path, "--max_steps", steps, "--learning_rate", "3e-3", "--per_device_train_batch_size", "16",
                  "--synthetic_task", task, "--synthetic_days", days)  # fmt: skip
    for key in ("lm_loss", term):
        values = logged(trainer, key)
        assert np.mean(values[-10:]) < 0.9 * np.mean(values[:10]), (key, values)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "scaler.json").is_file()
    split = json.loads((tmp_path / "split.json").read_text())
    ds = trainer.train_dataset
    assert set(split["regions"]) == {ds.city.region_ids[i] for i in ds.region_idx}
    ref = predictions(trainer.model, trainer)
    back = predictions(STLlamaForCausalLM.from_pretrained(tmp_path), trainer)
    assert torch.equal(back.reg_pred, ref.reg_pred) and torch.equal(back.logits, ref.logits)


def test_lora_training_moves_only_trainable_weights_and_reloads(tmp_path):
    trainer = run(tmp_path, "--max_steps", "4", "--learning_rate", "5e-2", "--full_finetune", "false")
    # the same construction, before training
    m_args, d_args, t_args = parse_args(["--output_dir", str(tmp_path / "x"), *SMALL])
    set_seed(t_args.seed)
    before, _ = build_model(m_args, d_args, prepare_data(d_args), "sdpa")
    after = STLlamaForCausalLM.from_pretrained(tmp_path)  # adapter merged
    b, a = before.state_dict(), after.state_dict()
    cfg = after.config
    changed = {k for k in b if not torch.equal(b[k], a[k])}
    assert not any(k.startswith("st_encoder.") for k in changed)  # frozen encoder
    assert not any(".mlp." in k for k in changed)  # not a LoRA target
    assert any("q_proj" in k for k in changed) and any(k.startswith("st_projector") for k in changed)
    assert any(k.startswith("reg_head") for k in changed)
    emb = "backbone.model.embed_tokens.weight"
    rows = torch.nonzero((b[emb] != a[emb]).any(dim=1)).flatten().tolist()
    assert rows == [cfg.st_pre_token_id]  # original vocabulary frozen; <st_his> rows are replaced by features
    ref = predictions(trainer.model, trainer)
    torch.testing.assert_close(predictions(after, trainer).reg_pred, ref.reg_pred, atol=1e-5, rtol=1e-5)


def test_resume_continues_to_the_same_losses(tmp_path):
    full = run(tmp_path / "a", "--max_steps", "8", "--save_strategy", "steps", "--save_steps", "4")
    resumed = run(tmp_path / "b", "--max_steps", "8", "--resume_from_checkpoint", str(tmp_path / "a" / "checkpoint-4"))
    steps = lambda t: {h["step"]: h["loss"] for h in t.state.log_history if "loss" in h}  # noqa: E731
    a, b = steps(full), steps(resumed)
    assert [a[s] for s in range(5, 9)] == [b[s] for s in range(5, 9)]


def test_refuses_to_overwrite_another_run(tmp_path):
    (tmp_path / "old.txt").write_text("a previous run")
    with pytest.raises(FileExistsError, match="overwrite_output_dir"):
        run(tmp_path, "--max_steps", "1")


def test_encoder_channel_mismatch_is_named(tmp_path):
    save_encoder(STEncoder(STEncoderConfig(in_channels=3, out_channels=3, num_tokens=3)), tmp_path / "enc")
    with pytest.raises(ValueError, match="2 channels .* built for 3"):
        run(tmp_path / "out", "--max_steps", "1", "--st_encoder_path", str(tmp_path / "enc"))


def test_arguments_from_a_yaml_file_equal_flags(tmp_path):
    (tmp_path / "run.yaml").write_text("output_dir: /tmp/r\nlora_r: 4\ndata: synthetic\nmax_steps: 3\n")
    m, d, t = parse_args([str(tmp_path / "run.yaml")])
    m2, d2, t2 = parse_args(["--output_dir", "/tmp/r", "--lora_r", "4", "--max_steps", "3"])
    assert (m, d) == (m2, d2) and t.max_steps == t2.max_steps == 3


def test_stage2_trains_on_the_stage1_regions_with_its_encoder_and_scaler(tmp_path):
    from stllm.train.pretrain_encoder import main as pretrain_main

    enc = tmp_path / "enc"
    args = ["--output_dir", str(enc), "--synthetic_regions", "8", "--synthetic_days", "6", "--epochs", "1",
            "--context_days", "1", "--context_weeks", "0",
            "--max_steps", "3", "--test_regions", "0.4", "--no_progress"]  # fmt: skip
    assert pretrain_main(args) == 0
    stage1 = json.loads((enc / "split.json").read_text())
    trainer = run(tmp_path / "out", "--max_steps", "2", "--st_encoder_path", str(enc))
    stage2 = json.loads((tmp_path / "out" / "split.json").read_text())
    assert set(stage2["regions"]) == set(stage1["regions"]) and len(stage1["regions"]) == 5
    assert (tmp_path / "out" / "scaler.json").read_text() == (enc / "scaler.json").read_text()
    model = STLlamaForCausalLM.from_pretrained(tmp_path / "out")
    reference = __import__("stllm").load_encoder(enc)
    for k, v in reference.state_dict().items():
        assert torch.equal(model.st_encoder.state_dict()[k], v)
    assert trainer.state.global_step == 2


def test_bad_deepspeed_configs_name_the_file(tmp_path):
    pytest.importorskip("deepspeed")  # without it --deepspeed is refused first, naming the extra to install
    from stllm.train.train_mem import main

    bad = tmp_path / "ds.json"
    bad.write_text("{ not json")
    with pytest.raises(ValueError, match="ds.json: not valid JSON"):
        parse_args(["--output_dir", str(tmp_path / "o"), "--deepspeed", str(bad)])
    with pytest.raises(FileNotFoundError, match="missing.json"):
        parse_args(["--output_dir", str(tmp_path / "o"), "--deepspeed", str(tmp_path / "missing.json")])
    # the command line prints the message, no traceback, exit code 2
    assert main(["--output_dir", str(tmp_path / "o"), "--deepspeed", str(bad)]) == 2


def test_event_pos_weight_is_negatives_over_positives_counted_by_hand_on_training_cells():
    from types import SimpleNamespace

    from stllm.data import CityData, Region, RegionSplit
    from stllm.train.train_mem import event_pos_weight

    # 10 days x 3 regions x 3 categories; region "c" is held out and days 8-9 are after the training time
    v = np.zeros((10, 3, 3), np.float32)
    v[0, 0, 0] = 1  # category 0: 1 positive in the 16 training cells (8 days x regions a, b) -> 15 / 1
    v[:4, :2, 1] = 2  # category 1: 8 positives in 16 cells (a count of 2 is one event day) -> 8 / 8
    v[:, 2, :] = 1  # everything happens in the held-out region, and ...
    v[8:, :, 2] = 1  # ... category 2 only after the training time: never seen -> the cap
    city = CityData(v, np.datetime64("2024-01-01") + np.arange(10), "1D", ("rare", "half", "never"),
                    tuple(Region(r, r) for r in "abc"), task="event")  # fmt: skip
    data = SimpleNamespace(city=city, regions=RegionSplit(train=("a", "b"), test=("c",)), train_time=slice(0, 8))
    w = event_pos_weight(data, cap=20.0)
    assert w == pytest.approx([15.0, 1.0, 20.0])
    assert w[0] > w[1]  # the rarer category weighs more
    assert event_pos_weight(SimpleNamespace(city=dataclasses.replace(city, task="flow"))) is None


def test_resume_refuses_a_checkpoint_of_another_model_and_names_the_fields(tmp_path):
    run(tmp_path / "a", "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2")
    with pytest.raises(ValueError, match="text_config.hidden_size: checkpoint 64, now 256"):
        run(tmp_path / "b", "--max_steps", "4", "--tiny_preset", "small",
            "--resume_from_checkpoint", str(tmp_path / "a" / "checkpoint-2"))  # fmt: skip


def test_validation_on_later_training_times_keeps_the_best_weights_and_stops_early(tmp_path):
    from stllm.train.trainer import BestWeights

    args = ["--val_fraction", "0.3", "--max_val_samples", "32", "--eval_steps", "4", "--early_stopping_patience", "2"]
    trainer = run(tmp_path, "--max_steps", "40", "--learning_rate", "3e-3", *args)
    evals = logged(trainer, "eval_forecast_loss")
    assert len(evals) >= 2 and "eval_reg_loss" in trainer.state.log_history[-2]
    best = next(c for c in trainer.callback_handler.callbacks if isinstance(c, BestWeights))
    assert best.best == pytest.approx(min(evals), abs=1e-6)
    saved = STLlamaForCausalLM.from_pretrained(tmp_path).state_dict()
    for k, v in best.weights.items():  # the checkpoint holds the best validation's weights
        torch.testing.assert_close(saved[k], v)
    # validation: training regions, targets after every fitting window's targets
    val, fit = trainer.eval_dataset.dataset, trainer.train_dataset
    assert list(val.region_idx) == list(fit.region_idx)
    assert int(val.starts.min()) + 12 >= int(fit.starts.max()) + 24
    # nothing improves at learning rate 0: the starting weights (validated at step 0) stay the best, and
    # training stops after `patience` more validations, long before max_steps
    still = run(tmp_path / "lr0", "--max_steps", "200", "--learning_rate", "0", *args)
    assert still.state.global_step == 8 and len(logged(still, "eval_forecast_loss")) == 3



def test_validation_regions_are_held_out_of_fitting_and_shared_with_stage_1(tmp_path):
    """--val_region_fraction: validation reads only regions that no fitting window reads (the ones stage 1
    held out when its encoder recorded some), and the checkpoint's split still lists them as training
    regions, so a zero-shot evaluation refuses them."""
    _, d, _ = parse_args(["--output_dir", str(tmp_path), *SMALL, "--val_fraction", "0.3", "--val_region_fraction",
                          "0.34"])  # fmt: skip
    data = prepare_data(d)
    fit, val = set(data.train.region_idx.tolist()), set(data.val.dataset.region_idx.tolist())
    train_idx = set(data.city.region_index(data.regions.train).tolist())
    assert len(val) == round(0.34 * len(train_idx)) == 2 and not fit & val and fit | val == train_idx
    assert set(json.loads(data.artifacts()["split.json"])["regions"]) == set(data.regions.train)
    # an encoder directory that recorded its held-out regions decides which ones stage 2 holds out
    enc_dir = tmp_path / "enc"
    enc_dir.mkdir()
    chosen = sorted(data.regions.train)[:3]
    (enc_dir / "metrics.json").write_text(json.dumps({"settings": {"val_regions": chosen}}))
    again = prepare_data(d, encoder_dir=str(enc_dir))
    assert set(again.val.dataset.region_idx.tolist()) == set(again.city.region_index(chosen).tolist())
    (enc_dir / "metrics.json").write_text(json.dumps({"settings": {"val_regions": ["no-such-region"]}}))
    with pytest.raises(ValueError, match="val_regions"):
        prepare_data(d, encoder_dir=str(enc_dir))

def _checkpoint(tmp_path, name="a", *extra):
    run(tmp_path / name, "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "2", *extra)
    return tmp_path / name / "checkpoint-2"


def test_resume_refuses_a_checkpoint_of_other_data_split_or_tokens_and_names_what_differs(tmp_path):
    ckpt = _checkpoint(tmp_path)
    # same architecture, other data: the tokenizer retrained on other prompts, other samples
    with pytest.raises(ValueError, match=r"data_args.json synthetic_seed: checkpoint 0, now 3") as e:
        run(tmp_path / "b", "--max_steps", "4", "--synthetic_seed", "3", "--resume_from_checkpoint", str(ckpt))
    assert "split.json" in str(e.value) and "scaler.json" in str(e.value) and "token ids mean other" in str(e.value)
    with pytest.raises(ValueError, match=r"split.json regions: checkpoint \["):  # another region split
        run(tmp_path / "c", "--max_steps", "4", "--split_seed", "5", "--resume_from_checkpoint", str(ckpt))
    # the same data, but the token strings behind two ids exchanged in the checkpoint's tokenizer
    other = tmp_path / "other"
    shutil.copytree(ckpt, other)
    tok = json.loads((other / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = list(vocab)[100:102]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (other / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ValueError, match=r"tokenizer: 2 of \d+ token ids mean other strings"):
        run(tmp_path / "d", "--max_steps", "4", "--resume_from_checkpoint", str(other))


@pytest.mark.parametrize("missing", [["optimizer.pt"], ["scheduler.pt", "trainer_state.json"]])
def test_resume_refuses_a_checkpoint_without_optimizer_or_schedule_state(tmp_path, missing):
    ckpt = _checkpoint(tmp_path)
    for name in missing:
        (ckpt / name).unlink()
    with pytest.raises(FileNotFoundError, match=f"has no {', '.join(missing)}.*losses would differ"):
        run(tmp_path / "b", "--max_steps", "4", "--resume_from_checkpoint", str(ckpt))
    assert not (tmp_path / "b" / "model.safetensors").exists()


def test_resume_from_a_final_output_dir_is_refused_naming_the_optimizer_state(tmp_path):
    from stllm.train.train_mem import main

    _checkpoint(tmp_path)  # tmp_path/a holds the final model, trainer_state.json, no optimizer state
    with pytest.raises(FileNotFoundError, match="has no optimizer.pt, scheduler.pt"):
        run(tmp_path / "b", "--max_steps", "4", "--resume_from_checkpoint", str(tmp_path / "a"))
    assert main(["--output_dir", str(tmp_path / "b"), "--resume_from_checkpoint", str(tmp_path / "a")]) == 2


def test_deepspeed_checkpoints_keep_the_optimizer_state_in_global_step_dirs(tmp_path):
    from stllm.train.train_mem import check_resume_state

    (tmp_path / "global_step2").mkdir()
    (tmp_path / "trainer_state.json").write_text("{}")
    check_resume_state(tmp_path)  # no optimizer.pt / scheduler.pt: DeepSpeed keeps them in global_step2/
    (tmp_path / "trainer_state.json").unlink()
    with pytest.raises(FileNotFoundError, match="has no trainer_state.json"):
        check_resume_state(tmp_path)


def test_resuming_a_run_into_its_own_directory_is_allowed_but_not_while_it_is_locked(tmp_path):
    from stllm.outdir import claim_output_dir

    ckpt = _checkpoint(tmp_path)
    resumed = run(tmp_path / "a", "--max_steps", "4", "--resume_from_checkpoint", str(ckpt))
    assert resumed.state.global_step == 4
    with claim_output_dir(tmp_path / "a", "training run", overwrite=True):
        with pytest.raises(FileExistsError, match=f"pid {os.getpid()}"):
            run(tmp_path / "a", "--max_steps", "4", "--resume_from_checkpoint", str(ckpt))
    with pytest.raises(FileExistsError, match="holds a training run.*--overwrite_output_dir"):  # another run's dir
        run(tmp_path / "a", "--max_steps", "1")


def test_a_second_run_into_a_directory_being_written_is_refused_naming_the_pid(tmp_path):
    from stllm.outdir import LOCK_NAME, claim_output_dir

    with claim_output_dir(tmp_path / "out", "training run"):  # a live run holds the directory
        with pytest.raises(FileExistsError, match=f"another stllm job \\(training run, pid {os.getpid()}"):
            run(tmp_path / "out", "--max_steps", "1", "--overwrite_output_dir", "true")
        assert not (tmp_path / "out" / "model.safetensors").exists()
    trainer = run(tmp_path / "out", "--max_steps", "1")  # free again; the run holds the lock while it trains
    assert trainer.state.global_step == 1 and not (tmp_path / "out" / LOCK_NAME).exists()


def test_only_global_rank_0_claims_the_output_dir(tmp_path):
    from types import SimpleNamespace

    from stllm.outdir import LOCK_NAME
    from stllm.train.train_mem import claim_run_dir

    args = dict(output_dir=str(tmp_path / "out"), overwrite_output_dir=False, resume_from_checkpoint=None)
    with claim_run_dir(SimpleNamespace(process_index=1, **args)):
        assert not (tmp_path / "out" / LOCK_NAME).exists()
        with claim_run_dir(SimpleNamespace(process_index=0, **args)):
            assert (tmp_path / "out" / LOCK_NAME).is_file()
            with claim_run_dir(SimpleNamespace(process_index=2, **args)):  # other ranks never contend
                pass


def test_train_poi_claims_its_output_dir(tmp_path, capsys):
    from stllm.outdir import claim_output_dir
    from stllm.train.train_poi import main

    argv = ["--output_dir", str(tmp_path / "poi"), "--max_steps", "1", "--save_strategy", "no",
            "--overwrite_output_dir", "true"]  # fmt: skip
    with claim_output_dir(tmp_path / "poi", "training run"):
        assert main(argv) == 2
    assert f"being written by another stllm job (training run, pid {os.getpid()}" in capsys.readouterr().err


@pytest.mark.parametrize("flag,value,words", [
    ("--max_steps", "0", "--max_steps must be > 0 (or -1"),
    ("--max_steps", "-2", "--max_steps must be > 0"),
    ("--num_train_epochs", "0", "--num_train_epochs must be > 0"),
    ("--num_train_epochs", "-1", "--num_train_epochs must be > 0"),
    ("--per_device_train_batch_size", "0", "--per_device_train_batch_size must be > 0"),
    ("--learning_rate=-1e-3", None, "--learning_rate must be >= 0"),
    ("--test_regions", "-0.5", "--test_regions must be in (0, 1)"),
    ("--test_regions", "1", "--test_regions must be in (0, 1)"),
    ("--train_time", "0", "--train_time must be in (0, 1]"),
    ("--val_fraction", "1", "--val_fraction must be in [0, 1)"),
    ("--val_region_fraction", "1", "--val_region_fraction must be in [0, 1)"),
    ("--input_len", "0", "--input_len must be > 0"),
    ("--output_len", "-12", "--output_len must be > 0"),
    ("--stride", "0", "--stride must be > 0"),
    ("--max_train_samples", "0", "--max_train_samples must be > 0"),
    ("--max_val_samples", "-1", "--max_val_samples must be > 0"),
    ("--context_days", "-1", "--context_days must be >= 0"),
    ("--context_weeks", "-2", "--context_weeks must be >= 0"),
    ("--synthetic_regions", "0", "--synthetic_regions must be > 0"),
    ("--lora_r", "0", "--lora_r must be > 0"),
    ("--lora_alpha", "-16", "--lora_alpha must be > 0"),
    ("--lora_dropout", "1", "--lora_dropout must be in [0, 1)"),
    ("--reg_loss_weight", "-1", "--reg_loss_weight must be >= 0"),
    ("--tiny_preset", "huge", "--tiny_preset must be one of"),
])  # fmt: skip
def test_out_of_range_arguments_are_refused_naming_the_flag(tmp_path, capsys, flag, value, words):
    from stllm.train.train_mem import main

    argv = ["--output_dir", str(tmp_path), flag, *([value] if value else [])]
    with pytest.raises(ValueError) as e:
        parse_args(argv)
    assert words in str(e.value)
    assert main(argv) == 2
    assert words in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_edge_values_that_mean_something_are_kept(tmp_path):
    m, d, t = parse_args(["--output_dir", str(tmp_path), "--max_steps", "-1", "--val_fraction", "0",
                          "--context_days", "0", "--context_weeks", "0", "--train_time", "1"])  # fmt: skip
    assert t.max_steps == -1 and d.val_fraction == 0 and d.context_days == d.context_weeks == 0


def test_poi_arguments_are_range_checked(tmp_path):
    from stllm.train.train_poi import POIDataArguments

    with pytest.raises(ValueError, match="--prompt_visits must be > 0, got 0"):
        parse_args(["--output_dir", str(tmp_path), "--prompt_visits", "0"], data_class=POIDataArguments)


def test_deepspeed_without_torchrun_runs_as_a_one_process_job(tmp_path):
    pytest.importorskip("deepspeed")
    root = Path(__file__).resolve().parents[2]
    script = (
        "import sys; from stllm.train.train_mem import train, shutdown_distributed; "
        "from stllm.train.arguments import parse_args; t = train(*parse_args(sys.argv[1:])); "
        "print('ENGINE', type(t.model_wrapped).__name__, t.state.global_step); shutdown_distributed()"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    argv = ["--output_dir", str(tmp_path / "ds"), *SMALL, "--max_steps", "2",
            "--deepspeed", str(root / "ds_configs" / "zero2.json")]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, env=env,
                          cwd=root, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ENGINE DeepSpeedEngine 2" in done.stdout and "mpi4py" not in done.stderr


@pytest.mark.parametrize("suffix, text", [(".json", '{\n  "output_dir": \n'), (".yaml", "output_dir: [unclosed\n")])
def test_a_corrupt_argument_file_is_named(tmp_path, suffix, text):
    path = tmp_path / f"args{suffix}"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"{path.name}.*not valid"):
        parse_args([str(path)])


def test_an_argument_file_sets_the_fields(tmp_path):
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"output_dir": str(tmp_path / "o"), "synthetic_regions": 9, "max_steps": 4}))
    _, data_args, training_args = parse_args([str(path)])
    assert (data_args.synthetic_regions, training_args.max_steps) == (9, 4)


def test_the_level_scaled_correction_is_on_by_default_where_a_level_block_exists():
    """Flows with week views get the level block and, by default, the gain-scaled correction at inference; events
    (no level block) and ``--st_level_scales_correction false`` do not."""
    from stllm.data import synthetic_city
    from stllm.train.train_mem import encoder_config

    city = synthetic_city(0, n_regions=3, days=21, freq="1h")
    weeks = ["--context_days", "1", "--context_weeks", "2"]
    model_args, data_args, _ = parse_args(["--output_dir", "x", *weeks])
    on = encoder_config(city, data_args, None, model_args)
    assert on["level_len"] == 24 and on["level_scales_correction"] is True
    model_args, data_args, _ = parse_args(["--output_dir", "x", *weeks, "--st_level_scales_correction", "false"])
    assert encoder_config(city, data_args, None, model_args)["level_scales_correction"] is False
    model_args, data_args, _ = parse_args(["--output_dir", "x", "--context_days", "1", "--context_weeks", "0"])
    off = encoder_config(city, data_args, None, model_args)
    assert off["level_len"] == 0 and off["level_scales_correction"] is False
