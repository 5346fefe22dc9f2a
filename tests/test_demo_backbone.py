"""stllm demo --backbone: refused before any work when it cannot apply; its flags reach stage 2 last."""

import pytest

from stllm.cli import main
from stllm.demo import resolve_preset
from stllm.train.arguments import parse_args


@pytest.mark.parametrize("flags, message", [
    (["--data", "next-poi", "--backbone", "{tmp}"], "--backbone applies to the flow/event demos only"),
    (["--backbone", "{tmp}/absent"], "--backbone {tmp}/absent: no such model folder or .gguf file"),
])  # fmt: skip
def test_demo_backbone_refused_before_any_work(flags, message, tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--no_progress", "--output_dir", str(out),
                 *(f.format(tmp=tmp_path) for f in flags)]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith(f"stllm demo: error: {message.format(tmp=tmp_path)}") and not out.exists()


def test_extra_flags_override_the_preset_defaults(tmp_path):
    argv, _, _ = resolve_preset(tmp_path, quick=True, extra_flags=("--per_device_train_batch_size", "4",
                                                                   "--eval_on_start", "false"))  # fmt: skip
    _, _, train_args = parse_args(["--output_dir", str(tmp_path / "m"), *argv])
    assert train_args.per_device_train_batch_size == 4  # the preset says 16
    assert train_args.eval_on_start is False  # the default is True
