"""Intent baselines on a hand-built log: each picks what its definition says, ties fall back as documented."""

import numpy as np

from stllm.data.intent import INTENTS, IntentSplit, TransitionTables, build_event_log, target_rows
from stllm.eval.intent_baselines import population_markov, user_markov, user_most_frequent

F, S, T = (INTENTS.index(n) for n in ("Food", "Shop & Service", "Travel & Transport"))


def test_baselines_follow_their_definitions():
    # population user p: Food -> Travel twice; held-out user h: Food -> Shop, Shop -> Shop (train), then Food -> ?
    names = {F: "Food", S: "Shop & Service", T: "Travel & Transport"}
    seq_p = [F, T, F, T]
    seq_h = [F, S, S, S, F, T]
    times = [np.datetime64("2024-01-01T08:00", "m") + np.timedelta64(60 * i, "m") for i in range(4)]
    times_h = times + [np.datetime64("2024-01-03T08:00", "m"), np.datetime64("2024-01-03T09:00", "m")]
    log = build_event_log(["p"] * 4 + ["h"] * 6, times + times_h, ["x"] * 10, [names[i] for i in seq_p + seq_h])
    day3 = int(np.datetime64("2024-01-03", "D").astype(np.int64))
    split = IntentSplit(("p",), ("h",), {"p": day3, "h": day3})
    rows = target_rows(log)
    tables = TransitionTables.fit(log, rows, split)
    test = np.array([4, 5])  # h sorts first: its day-3 targets, after Shop (row 3) and after Food (row 4)
    assert user_most_frequent(tables, log, test).argmax(-1).tolist() == [S, S]
    # user Markov: after Shop the user went Shop twice; after Food once Shop
    assert user_markov(tables, log, test).argmax(-1).tolist() == [S, S]
    # population Markov (p: Food -> Travel twice, Travel -> Food once): after Food -> Travel; after Shop, a row
    # the population never saw, its most frequent intent (Travel)
    assert population_markov(tables, log, test).argmax(-1).tolist() == [T, T]
