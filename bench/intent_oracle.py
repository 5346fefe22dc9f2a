"""Issue 18, a ceiling (an *oracle*, not a result): how many held-out users could strictly raise their macro F1 over
the population model with a user-level change built from their training days, each user's change chosen on their
own *test* targets. It says whether "individual tuning improves macro F1 for most users" is reachable on the data.

Families of per-user changes to the population model's test probabilities ``p`` (each one from training days only;
the oracle picks per user the best member on test):
- ``table mix``: ``(1 - lam) p + lam P_u(intent | last intent)`` with ``lam = n / (n + m)``, ``m`` in a grid (the
  ``--mix_ms`` step, its ``m`` per user instead of one for all), and ``lam = 1`` (the user's table alone);
- ``prior adjustment``: ``log p - tau log P_u(intent)`` (user's prior, add-1), ``tau`` in a grid;
- ``one intent offset``: ``log p + b e_j`` for one intent ``j`` and ``b`` in a grid (a per-user threshold move);
- ``any of these``: the union.
For comparison, an honest version of each family: each user's member chosen on their own *validation* days (the end
of their earlier days, :func:`stllm.data.intent.validation_data`; keep the population model unless a member strictly
beats it there), then scored on test (users up / tie / down).
Reads the population model that ``bench/intent_quality.py --models`` left in ``--out/seedK/population``.

    python bench/intent_oracle.py --out /tmp/b18e/nb/nyc --seeds 0,4 --heldout_share 0.5
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from stllm.data.intent import INTENTS, IntentCollator
from stllm.eval.intent_metrics import oracle_user_gains, per_user_scores, user_changes
from stllm.models.intent import load_intent_checkpoint, run_intent
from stllm.train.tune_intent import population_shares, user_prior, user_table_of

MIX_MS = (0.3, 1, 3, 10, 30, 100, 300, 1000, 3000)
TAUS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
OFFSETS = (-3, -2, -1.5, -1, -0.5, -0.25, 0.25, 0.5, 1, 1.5, 2, 3)


def families(logits: np.ndarray, table: np.ndarray, counts: np.ndarray, n: np.ndarray) -> dict[str, np.ndarray]:
    """``{family: (G, n_rows) predictions}`` of each family's members (see the module docstring)."""
    z = logits - logits.max(-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    lams = [n / (n + m) for m in MIX_MS] + [np.ones_like(n, dtype=np.float64)]
    mix = np.stack([((1 - lam[:, None]) * p + lam[:, None] * table).argmax(-1) for lam in lams])
    log_prior = np.log(user_prior(counts, 1.0))
    adjust = np.stack([(np.log(p) - tau * log_prior).argmax(-1) for tau in TAUS])
    eye = np.eye(p.shape[-1])
    offset = np.stack([(np.log(p) + b * eye[j]).argmax(-1) for j in range(p.shape[-1]) for b in OFFSETS])
    return {"table mix": mix, "prior adjustment": adjust, "one intent offset": offset,
            "any of these": np.concatenate([mix, adjust, offset])}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="the --out of bench/intent_quality.py --models")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--heldout_share", type=float, default=None)
    args = ap.parse_args(argv)
    from stllm.data.intent import prepare_from_record, validation_data

    c = len(INTENTS)
    for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
        teacher, tok, record = load_intent_checkpoint(args.out / f"seed{seed}" / "population")
        data = prepare_from_record(record, args.heldout_share)
        split = {}
        for name, d in (("test", data), ("val", validation_data(data))):
            ds = d.dataset("user_test", history=int(record.get("history", 8)))
            logits = run_intent(teacher, IntentCollator(tok), ds).numpy()
            n = np.bincount(d.log.user[d.rows_of("user_train")], minlength=len(d.log.user_ids))[ds.users]
            table = user_table_of(d, ds.rows, population_shares(d))
            split[name] = (ds.targets, ds.users, logits.argmax(-1),
                           families(logits, table, d.tables.user_freq[ds.users], n))
        y, users, base, test_families = split["test"]
        vy, vusers, vbase, val_families = split["val"]
        _, per = per_user_scores(y, base, users, c)
        print(f"seed {seed}: {len(per['macro_f1'])} held-out users; population model per-user macro F1 below 1 "
              f"(could improve with perfect predictions): {int((per['macro_f1'] < 1 - 1e-12).sum())}")
        for name, cands in test_families.items():
            _, gain, _ = oracle_user_gains(y, base, cands, users, c)
            vids, _, vbest = oracle_user_gains(vy, vbase, val_families[name], vusers, c)
            pick = np.full(len(data.log.user_ids), -1)
            pick[vids] = vbest
            chosen = np.where(pick[users] >= 0, cands[np.maximum(pick[users], 0), np.arange(len(y))], base)
            ch = user_changes(y, base, chosen, users, c)
            print(f"seed {seed}: ORACLE (chosen on test) {name} ({len(cands)} per user): users who can strictly "
                  f"improve {int((gain > 0).sum())} of {len(gain)}, mean per-user macro F1 gain {gain.mean():.4f}; "
                  f"chosen per user on validation days instead: users up/tie/down {ch['improved']}/{ch['tied']}/"
                  f"{ch['worse']}", flush=True)


if __name__ == "__main__":
    main()
