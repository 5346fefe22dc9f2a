import json
import os
import subprocess
import sys

import pytest

from stllm.outdir import LOCK_NAME, check_output_dir, claim_output_dir, held_artifact


def test_held_artifact_tells_runs_encoders_models_and_evaluations_apart(tmp_path):
    assert held_artifact(tmp_path / "missing") is None and held_artifact(tmp_path) is None
    run = tmp_path / "run"
    (run / "checkpoint-3").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    enc = tmp_path / "enc"
    enc.mkdir()
    (enc / "encoder_config.json").write_text(json.dumps({"kind": "geo"}))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    ev = tmp_path / "ev"
    ev.mkdir()
    (ev / "metrics.json").write_text("{}")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    assert [held_artifact(p) for p in (run, enc, model, ev, other)] == [
        "training run",
        "geo encoder",
        "model",
        "evaluation",
        "other files",
    ]


def test_another_artefact_is_refused_even_with_overwrite_and_the_same_kind_needs_it(tmp_path):
    (tmp_path / "trainer_state.json").write_text("{}")
    with pytest.raises(FileExistsError, match="holds a training run, not a model"):
        check_output_dir(tmp_path, "model", overwrite=True)
    with pytest.raises(FileExistsError, match="--overwrite_output_dir"):
        check_output_dir(tmp_path, "training run", flag="--overwrite_output_dir")
    check_output_dir(tmp_path, "training run", overwrite=True)


def test_a_live_lock_refuses_a_second_writer_and_a_dead_one_is_taken_over(tmp_path):
    with claim_output_dir(tmp_path / "out", "model") as out:
        assert (out / LOCK_NAME).is_file()
        with pytest.raises(FileExistsError, match=f"pid {os.getpid()}"):
            with claim_output_dir(out, "model"):
                pass
    assert not (tmp_path / "out" / LOCK_NAME).exists()  # released on exit
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = tmp_path / "out" / LOCK_NAME
    import socket

    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "kind": "model"}))
    with claim_output_dir(tmp_path / "out", "model"):  # the writer was killed: its lock does not block
        assert json.loads(lock.read_text())["pid"] == os.getpid()


def test_the_lock_is_released_when_the_job_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with claim_output_dir(tmp_path, "model"):
            raise RuntimeError("boom")
    assert not (tmp_path / LOCK_NAME).exists()
