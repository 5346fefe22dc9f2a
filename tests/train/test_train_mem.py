"""Stage-2 training on a small synthetic city: losses fall, only trainable weights move, exact resume,
checkpoints reload to the trained predictions, and bad setups are refused."""

import json

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
    from stllm.train.train_mem import main

    bad = tmp_path / "ds.json"
    bad.write_text("{ not json")
    with pytest.raises(ValueError, match="ds.json: not valid JSON"):
        parse_args(["--output_dir", str(tmp_path / "o"), "--deepspeed", str(bad)])
    with pytest.raises(FileNotFoundError, match="missing.json"):
        parse_args(["--output_dir", str(tmp_path / "o"), "--deepspeed", str(tmp_path / "missing.json")])
    # the command line prints the message, no traceback, exit code 2
    assert main(["--output_dir", str(tmp_path / "o"), "--deepspeed", str(bad)]) == 2


def test_event_training_balances_rare_categories():
    from stllm.train.train_mem import event_pos_weight

    m, d, t = parse_args(["--output_dir", "/tmp/unused", "--synthetic_task", "event", "--synthetic_days", "60",
                          "--synthetic_regions", "8"])  # fmt: skip
    data = prepare_data(d)
    w = event_pos_weight(data)
    idx = data.city.region_index(data.regions.train)
    rate = (data.city.values[data.train_time][:, idx] > 0).mean(axis=(0, 1))
    assert len(w) == data.city.n_channels
    np.testing.assert_allclose(w, np.minimum(20, (1 - rate) / rate), rtol=1e-6)


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
