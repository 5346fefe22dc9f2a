"""Prompt lengths in SmolLM2 tokens per task (CPU cost of a real backbone is linear in them), and what
the parts that carry no per-sample information cost: the Vicuna system sentence, the ChatML frame, the
closing request of the flow/event prompts and the repeated sampling interval; and the flow/event prompts'
length in the compact style (``--prompt_style compact``: the same facts without that filler).

    python bench/smollm2_prompts.py --backbone_dir checkpoints/smollm2-135m
"""

from __future__ import annotations

import argparse
import re

import numpy as np

from stllm.data.prompts import VICUNA_SYSTEM, ChatFormatter, Conversation
from stllm.tokens import add_mobility_token, add_st_tokens

# phrases of the templates (stllm/data/prompts.py) that are the same in every sample of a task
CLOSING = re.compile(r" Please analyse the .*?(regression|classification)\.")
INTERVAL = re.compile(r", with data points recorded at [\w-]+ intervals")


def _flow_samples(name: str, n: int, root: str | None, style: str = "urbangpt") -> list:
    from stllm.data.dataset import STInstructionDataset
    from stllm.data.loaders import load_preset

    city = load_preset(name, root) if name != "synthetic" else load_preset("synthetic", n_regions=20, days=28)
    ds = STInstructionDataset(city, input_len=12, output_len=12, prompt_style=style)
    return [ds[int(i)] for i in np.linspace(0, len(ds) - 1, n).astype(int)]


def _poi_samples(n: int, root: str | None) -> tuple[list, object]:
    from stllm.data.checkins import load_checkins
    from stllm.data.loaders import data_root
    from stllm.data.next_poi import NextPOIDataset, next_poi_train_task

    table = load_checkins(f"{root or data_root()}/foursquare_nyc/NYC_val.csv")
    ds = NextPOIDataset(next_poi_train_task(table))
    return [ds[int(i)] for i in np.linspace(0, len(ds) - 1, n).astype(int)], table


def _mobility_samples(n: int) -> list:
    from stllm.data.mobility import MobilityDataset, synthetic_mobility_city, training_windows

    ds = MobilityDataset(synthetic_mobility_city(0, 20), training_windows())
    return [ds[int(i)] for i in np.linspace(0, len(ds) - 1, n).astype(int)]


def count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoTokenizer

    from stllm.data.collator import STDataCollator
    from stllm.data.mobility import MobilityCollator
    from stllm.data.next_poi import NextPOICollator

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone_dir", default="checkpoints/smollm2-135m", help="stllm backbone smollm2-135m output")
    p.add_argument("--data_root", default=None, help="real data folder (default ../shared/data)")
    p.add_argument("--samples", type=int, default=64, help="samples per task (evenly spaced)")
    args = p.parse_args(argv)
    tok = AutoTokenizer.from_pretrained(args.backbone_dir)
    add_st_tokens(tok)
    add_mobility_token(tok)
    tasks, compact = {}, {}
    for name, preset in (("flow (synthetic)", "synthetic"), ("flow (manhattan-taxi)", "manhattan-taxi"),
                         ("event (crime)", "crime")):  # fmt: skip
        samples = _flow_samples(preset, args.samples, args.data_root)
        tasks[name] = (samples, STDataCollator(tok, st_slots=np.shape(samples[0]["target"])[-1]))
        short = _flow_samples(preset, args.samples, args.data_root, "compact")
        compact[name] = np.array([sum(count(tok, t) for t in tasks[name][1].texts(x)) for x in short])
    poi, table = _poi_samples(args.samples, args.data_root)
    tasks["next-POI (Foursquare NYC)"] = (poi, NextPOICollator(tok, table))
    tasks["mobility (synthetic HuMob)"] = (_mobility_samples(args.samples), MobilityCollator(tok))
    system = count(tok, VICUNA_SYSTEM)
    frame = count(tok, "".join(ChatFormatter(tok)(Conversation("", "", ""))))
    print(f"tokenizer {args.backbone_dir}: {len(tok)} tokens; Vicuna system sentence {system} tokens, empty ChatML "
          f"frame {frame} tokens\n")  # fmt: skip
    print(f"{'task':<28} {'prompt':>8} {'answer':>8} {'total':>8} {'closing':>8} {'interval':>9} {'cut':>6} "
          f"{'compact':>8} {'ratio':>6}")
    for name, (samples, collator) in tasks.items():
        texts = [collator.texts(s) for s in samples]
        prompt = np.array([count(tok, a) for a, _ in texts])
        answer = np.array([count(tok, b) for _, b in texts])
        users = [s["conversation"].user for s in samples]
        closing = np.array([sum(count(tok, m.group(0)) for m in CLOSING.finditer(u)) for u in users])
        # the second interval phrase repeats the first: only it is filler
        interval = np.array([sum(count(tok, m.group(0)) for m in list(INTERVAL.finditer(u))[1:]) for u in users])
        total = prompt + answer
        cut = (system + closing + interval) / total
        short = f"{compact[name].mean():>8.0f} {compact[name].mean() / total.mean():>6.2f}" if name in compact else ""
        print(f"{name:<28} {prompt.mean():>8.0f} {answer.mean():>8.0f} {total.mean():>8.0f} {closing.mean():>8.0f} "
              f"{interval.mean():>9.0f} {cut.mean():>6.0%} {short}")  # fmt: skip
    print("\ncut: share of the tokens that the system sentence, the closing request and the repeated interval take "
          "(the same in every sample of a task); compact: prompt + answer tokens in the compact style, and its "
          "ratio to total")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
