import argparse
import json
import re
from pathlib import Path

import pytest

from stllm.cli import main, run_command, split_debug
from stllm.data import CityDataError

ROOT = Path(__file__).resolve().parents[1]


def test_env_reports_backend_and_runs_model_check(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^attention\s+(sdpa|flash_attention_2)$", out, re.M)
    assert re.search(r"model check\s+ok: .*reg_pred \(2, 12, 2\)", out)


def test_ci_runs_exactly_readme_test_command():
    """README's second fenced command is the command .ci/run executes."""
    blocks = re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)
    ci_lines = [ln for ln in (ROOT / ".ci/run").read_text().splitlines() if ln and not ln.startswith("#")]
    assert blocks[1].strip() in ci_lines
    pytest_args = blocks[1].split("python -m pytest", 1)[1].split()
    # the whole suite: stopping at the first failure hides every test after it
    assert not {"-x", "--exitfirst"} & set(pytest_args) and not any(a.startswith("--maxfail") for a in pytest_args)


def test_pretrain_encoder_geo_dispatches_to_the_geo_trainer(tmp_path, capsys):
    from stllm import load_encoder

    out = tmp_path / "geo"
    assert main(["pretrain-encoder", "--encoder", "geo", "--synthetic", "--n_synthetic", "300", "--steps", "5",
                 "--batch", "32", "--n_buckets", "64", "--output_dir", str(out)]) == 0  # fmt: skip
    assert type(load_encoder(out)).__name__ == "GeoEncoder"


# -- every sub-command's --help -----------------------------------------------------------------------
HELP_FLAGS = {  # argv before --help -> flags its help must list
    ("env",): ["--no-check"],
    ("train",): ["--model_name_or_path", "--st_encoder_path", "--data", "--output_dir"],
    ("train-poi",): ["--checkins", "--model_name_or_path", "--output_dir"],
    ("train-mobility",): ["--data", "--base", "--city", "--last_day", "--output_dir"],
    ("estimate-memory",): ["--zero_stage", "--num_gpus", "--table"],
    ("export",): ["checkpoint", "output"],
    ("pretrain-encoder",): ["--encoder", "--data", "--mode", "--output_dir"],
    ("pretrain-encoder", "--encoder", "geo"): ["--coords_csv", "--synthetic", "--steps", "--output_dir"],
    ("eval",): ["--mode", "--eval_start", "--allow-overlap"],
    ("eval", "next-poi"): ["--test", "--train", "--max_samples"],
    ("eval", "mobility"): ["checkpoint", "--data", "--base", "--city", "--published"],
    ("train-intent",): ["--data", "--heldout_frac", "--test_frac", "--output_dir"],
    ("eval", "intent"): ["checkpoint", "--part", "--output_dir"],
    ("train-gen",): ["--data", "--digits", "--max_lines", "--output_dir"],
    ("generate",): ["--requests", "--n", "--temperature", "--top_p", "--output"],
    ("eval", "gen"): ["--seeds", "--max_requests"],
    ("demo",): ["--data", "--seeds", "--quick", "--no_llm_row"],
    ("data",): ["check", "convert"],
    ("data", "check"): ["path", "--task", "--freq", "--channels", "--keys"],
    ("data", "convert"): ["format", "inputs", "--output", "--option"],
    ("backbone",): ["name", "--output_dir", "--overwrite"],
}


def test_help_flags_cover_every_sub_command():
    from stllm.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert {argv[0] for argv in HELP_FLAGS} == set(sub.choices)


@pytest.mark.parametrize("argv", list(HELP_FLAGS), ids=" ".join)
def test_every_sub_command_help_exits_0_and_lists_its_flags(argv, capsys):
    """`stllm train-poi --help` used to crash on an unescaped % in a help string."""
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in HELP_FLAGS[argv]:
        assert re.search(rf"(^|\s){re.escape(flag)}\b", out), (argv, flag)


# -- one error wrapper -------------------------------------------------------------------------------
def _raise(exc: BaseException):
    def fn():
        raise exc

    return fn


def _safetensor_error(tmp_path) -> BaseException:
    from safetensors.torch import load_file

    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not js}")
    try:
        load_file(bad)
    except Exception as e:  # noqa: BLE001 - whatever safetensors raises is what the CLI must catch
        return e
    raise AssertionError("safetensors loaded a corrupt file")


USER_ERRORS = [
    (ValueError("--steps must be positive"), "--steps must be positive"),
    (json.JSONDecodeError("Expecting value", "{", 0), "Expecting value: line 1 column 1 (char 0)"),
    (CityDataError("city.npz", "values", "negative count"), "city.npz: field 'values': negative count"),
    (FileNotFoundError(2, "No such file or directory", "/data/x.npz"), "/data/x.npz: No such file or directory"),
    (FileExistsError("runs/a exists; pass --overwrite_output_dir"), "runs/a exists; pass --overwrite_output_dir"),
    (NotADirectoryError(20, "Not a directory", "runs/file/x"), "runs/file/x: Not a directory"),
    (IsADirectoryError(21, "Is a directory", "runs"), "runs: Is a directory"),
    (PermissionError(13, "Permission denied", "/root/x"), "/root/x: Permission denied"),
]


@pytest.mark.parametrize("exc,message", USER_ERRORS, ids=lambda x: type(x).__name__ if isinstance(x, Exception) else "")
def test_user_error_is_one_line_on_stderr_exit_2_and_debug_reraises(exc, message, capsys):
    assert run_command("demo", _raise(exc)) == 2
    captured = capsys.readouterr()
    assert captured.err == f"stllm demo: error: {message}\n" and captured.out == ""
    with pytest.raises(type(exc)):
        run_command("demo", _raise(exc), debug=True)


def test_safetensors_error_is_a_user_error(tmp_path, capsys):
    exc = _safetensor_error(tmp_path)
    assert run_command("export", _raise(exc)) == 2
    err = capsys.readouterr().err
    assert err.startswith("stllm export: error: ") and "Traceback" not in err and len(err.splitlines()) == 1


def test_bug_keeps_its_traceback_and_asks_for_a_report(capsys):
    assert run_command("eval", _raise(KeyError("window"))) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "KeyError: 'window'" in err
    assert err.splitlines()[-1] == "stllm eval: this is a bug in stllm; please report it with the output of `stllm env`"


def test_interrupt_exits_130_and_exit_codes_pass_through(capsys):
    assert run_command("train", _raise(KeyboardInterrupt())) == 130
    assert capsys.readouterr().err == "stllm train: interrupted\n"
    with pytest.raises(KeyboardInterrupt):
        run_command("train", _raise(KeyboardInterrupt()), debug=True)
    assert run_command("x", lambda: 3) == 3 and run_command("x", lambda: None) == 0
    assert run_command("x", _raise(SystemExit("--train_frac must be in (0, 1]"))) == 2  # a module's worded exit
    assert capsys.readouterr().err == "stllm x: error: --train_frac must be in (0, 1]\n"
    with pytest.raises(SystemExit) as e:  # argparse's exit (usage already printed) keeps its code
        run_command("x", _raise(SystemExit(2)))
    assert e.value.code == 2


def test_debug_flag_is_taken_anywhere_and_leaves_training_debug_options(monkeypatch):
    monkeypatch.delenv("STLLM_DEBUG", raising=False)
    assert split_debug(["eval", "ckpt", "--debug"]) == (["eval", "ckpt"], True)
    assert split_debug(["--debug", "export", "a", "b"]) == (["export", "a", "b"], True)
    hf_debug = ["train", "--debug", "underflow_overflow"]  # TrainingArguments' own --debug keeps its value
    assert split_debug(hf_debug) == (hf_debug, False)
    assert split_debug(["eval", "ckpt"]) == (["eval", "ckpt"], False)
    monkeypatch.setenv("STLLM_DEBUG", "1")
    assert split_debug(["eval", "ckpt"]) == (["eval", "ckpt"], True)
    monkeypatch.setenv("STLLM_DEBUG", "0")
    assert split_debug(["eval", "ckpt"]) == (["eval", "ckpt"], False)


# -- user errors through main(): one line on stderr, exit 2, for commands that used to print tracebacks ---
@pytest.mark.parametrize("argv", [
    ["export", "{tmp}/none", "{tmp}/out"],
    ["eval", "{tmp}/none", "--no_progress"],
    ["eval", "next-poi", "{tmp}/none"],
    ["estimate-memory", "--config", "{tmp}/none"],
], ids=lambda argv: " ".join(argv[:2]))  # fmt: skip
def test_user_errors_through_main_name_the_command_and_file_on_stderr(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("STLLM_DEBUG", raising=False)
    argv = [a.format(tmp=tmp_path) for a in argv]
    command = " ".join(argv[:2]) if argv[1] == "next-poi" else argv[0]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"stllm {command}: error: ") and str(tmp_path / "none") in captured.err
    assert len(captured.err.splitlines()) == 1 and "error" not in captured.out
    with pytest.raises((FileNotFoundError, ValueError)):  # --debug shows where it came from
        main([*argv, "--debug"])


@pytest.mark.parametrize("argv, flag", [
    (["train", "--max_step", "0"], "--max_step"),  # would be --max_steps: 0 is refused either way, quickly
    (["pretrain-encoder", "--steps", "-3"], "--steps"),  # was --steps_per_epoch: ran whole epochs
    (["eval", "/nonexistent", "--batch", "4"], "--batch"),
    (["estimate-memory", "--num_gpu", "2"], "--num_gpu"),
    (["export", "a", "b", "--trust", "x"], "--trust"),
    (["pretrain-encoder", "--encoder", "geo", "--synthetic", "--step", "1"], "--step"),
    (["eval", "next-poi", "/nonexistent", "--max_sample", "3"], "--max_sample"),
])  # fmt: skip
def test_abbreviated_flags_are_refused_not_guessed(argv, flag, capsys):
    """A prefix of a flag names no flag: argparse's guessing turned ``--steps -3`` into ``--steps_per_epoch``."""
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own usage error
        code = e.code
    assert code == 2
    assert flag in capsys.readouterr().err


def test_data_errors_name_the_data_sub_command(tmp_path, capsys):
    (tmp_path / "empty.npz").write_bytes(b"")
    assert main(["data", "check", str(tmp_path / "empty.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stllm data check: error:") and "empty.npz" in err
