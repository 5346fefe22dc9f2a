"""``stllm`` console script: one entry point, one sub-command per job.

Every sub-command runs through :func:`run_command`, the one place that turns an exception into a
message and an exit code, so a user error reads the same whatever command raised it.
"""

from __future__ import annotations

import argparse
import os
import sys

from stllm.errors import run_command, split_debug

# ``stllm eval TASK``: the tasks whose evaluation has its own options (module with build_parser() and run(args));
# ``stllm eval`` alone evaluates flows and events (stllm.eval.zero_shot)
EVAL_TASKS = {
    "next-poi": "stllm.eval.next_poi",
    "mobility": "stllm.eval.mobility",
    "intent": "stllm.eval.intent",
    "gen": "stllm.eval.activity_eval",
}


def command_name(argv: list[str]) -> str:
    """The sub-command named in error messages: ``eval next-poi``, ``data check``, ``train``, ... (``stllm``
    alone when none)."""
    if (argv[:1] == ["eval"] and argv[1:2] and argv[1] in EVAL_TASKS) or (
            argv[:1] == ["data"] and argv[1:2] in (["check"], ["convert"])):
        return " ".join(argv[:2])
    return argv[0] if argv and not argv[0].startswith("-") else ""


def cmd_env(args: argparse.Namespace) -> int:
    """Print versions and the attention/dtype/backend this machine will use, then smoke-test a model."""
    import torch
    from transformers import LlamaConfig

    from stllm import STLlamaConfig, STLlamaForCausalLM
    from stllm.runtime import environment_report

    report = environment_report()
    width = max(map(len, report))
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")
    if args.no_check:
        return 0
    text = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=103,
    )
    model = STLlamaForCausalLM(
        STLlamaConfig(text_config=text, st_his_token_id=100, st_pre_token_id=101, geo_token_id=102)
    ).eval()
    ids = torch.randint(0, 100, (2, 16))
    ids[:, 2:4], ids[:, 10:12] = 100, 101
    with torch.no_grad():
        out = model(
            input_ids=ids,
            st_values=torch.randn(1, 12, 5, 2),
            st_window=torch.tensor([0, 0]),
            st_region=torch.tensor([1, 3]),
        )
    n = sum(p.numel() for p in model.parameters())
    print(
        f"{'model check':<{width}}  ok: tiny STLlamaForCausalLM ({n:,} params) forward -> "
        f"logits {tuple(out.logits.shape)}, reg_pred {tuple(out.reg_pred.shape)}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from stllm.train.memory import add_estimate_memory_parser

    parser = argparse.ArgumentParser(prog="stllm", description="Spatio-temporal LLMs of cities.", allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    env = sub.add_parser("env", allow_abbrev=False, help="print the environment and run a tiny model check")
    env.add_argument("--no-check", action="store_true", help="skip the tiny model forward")
    env.set_defaults(func=cmd_env)
    # these take their own flags (HfArgumentParser / argparse in their modules): everything after the name
    for name, target, text in (
        ("train", "stllm.train.train_mem", "stage-2 instruction tuning (same as stllm/train/train_mem.py)"),
        ("train-poi", "stllm.train.train_poi", "next-POI instruction tuning on check-ins (stllm/train/train_poi.py)"),
        ("train-gen", "stllm.train.train_gen",
         "daily activity generation tuning on activity days (stllm/train/train_gen.py)"),
        ("train-mobility", "stllm.train.train_mobility",
         "long-term mobility (HuMob) instruction tuning on trajectories (stllm/train/train_mobility.py)"),
        ("train-intent", "stllm.train.train_intent",
         "on-device intent prediction: the population model (stllm/train/train_intent.py)"),
    ):
        p = sub.add_parser(name, help=text, add_help=False, allow_abbrev=False)
        p.set_defaults(func=None, module=target)
    add_estimate_memory_parser(sub)
    from stllm.train import pretrain_encoder
    from stllm.train.export import add_export_parser

    add_export_parser(sub)

    pre = sub.add_parser(
        "pretrain-encoder",
        allow_abbrev=False,
        help="stage 1: pretrain the STEncoder on training regions and times",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    pre.add_argument("--encoder", choices=("st", "geo"), default="st",
                     help="which encoder: st (TCN on city windows) or geo (GPS coordinates; see --encoder geo --help)")
    pretrain_encoder.build_parser(pre)
    pre.set_defaults(func=lambda args: (pretrain_encoder.run(args), 0)[1])
    from stllm import demo
    from stllm.eval import zero_shot

    ev = sub.add_parser("eval", allow_abbrev=False, help="zero-shot evaluation of a checkpoint against baselines "
                        "(stllm eval next-poi --help: next-POI ranking; stllm eval mobility --help: HuMob; "
                        "stllm eval intent --help: next intent)",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    zero_shot.build_parser(ev)
    ev.set_defaults(func=zero_shot.run)
    dm = sub.add_parser("demo", help="the whole pipeline on CPU in minutes (synthetic city by default)",
                        allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    demo.build_parser(dm)
    dm.set_defaults(func=demo.run)
    from stllm.eval import generate

    gen = sub.add_parser("generate", allow_abbrev=False, help="generate activity days for personas (train-gen "
                         "checkpoint, constrained decoding)", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    generate.build_parser(gen)
    gen.set_defaults(func=generate.run)
    from stllm.data.commands import add_data_parser

    add_data_parser(sub)
    from stllm.models.backbones import add_backbone_parser

    add_backbone_parser(sub)
    return parser


def dispatch(argv: list[str]) -> int:
    """Parse ``argv`` and run its sub-command (errors propagate to :func:`run_command`)."""
    if argv[:1] == ["pretrain-encoder"] and "--encoder" in argv:
        i = argv.index("--encoder")
        if argv[i + 1 : i + 2] == ["geo"]:  # the geo encoder has its own options
            from stllm.train import pretrain_geo

            return pretrain_geo.main(argv[1:i] + argv[i + 2 :])
    if argv[:1] == ["eval"] and argv[1:2] and argv[1] in EVAL_TASKS:  # a task's evaluation has its own options
        import importlib

        task = importlib.import_module(EVAL_TASKS[argv[1]])
        return task.run(task.build_parser().parse_args(argv[2:]))
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if getattr(args, "module", None):
        import importlib

        return importlib.import_module(args.module).main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args.func(args)


def main(argv: list[str] | None = None) -> int:
    """The ``stllm`` console script; exit codes as in :func:`run_command`."""
    argv, debug = split_debug(sys.argv[1:] if argv is None else list(argv))
    before = os.environ.get("STLLM_DEBUG")
    if debug:  # entry points run inside this one (train, torchrun's ranks) read it from the environment
        os.environ["STLLM_DEBUG"] = "1"
    try:
        return run_command(command_name(argv), lambda: dispatch(argv), debug=debug)
    finally:
        if before is None:
            os.environ.pop("STLLM_DEBUG", None)
        else:
            os.environ["STLLM_DEBUG"] = before


if __name__ == "__main__":
    sys.exit(main())
