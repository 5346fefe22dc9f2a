"""stllm train-intent -> stllm eval intent -> distillation, ONNX and per-user tuning on a tiny synthetic run: what
trains is only population users' earlier days, the evaluation refuses a leaked split (exit 2, one line naming the
field), the student is far smaller and its ONNX graph equals PyTorch, and the unlearning term does what it says."""

import json

import numpy as np
import pytest
import torch

from stllm.cli import main as cli_main
from stllm.data.intent import INTENTS, IntentCollator, prepare_from_record, validation_data
from stllm.eval.intent import evaluate_intent
from stllm.models.intent import IntentHead, load_intent_checkpoint
from stllm.train.distill_intent import (
    DistillConfig,
    StudentSpec,
    distill,
    export_onnx,
    n_parameters,
    onnx_max_abs_diff,
)
from stllm.train.train_intent import main as train_main
from stllm.train.tune_intent import (
    Neighbours,
    Posthoc,
    TuneConfig,
    adjust_logits,
    batched_head_logits,
    fit_class_bias,
    history_weight,
    mix_user,
    nearest_users,
    population_shares,
    posthoc_logits,
    select_posthoc,
    sized_logits,
    tune_head,
    tune_heads_batched,
    tune_users,
    tuning_prior,
    unlearning_term,
    user_prior,
    user_profiles,
    user_table_of,
    user_table_probs,
)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("intent") / "pop"
    code = train_main(["--output_dir", str(out), "--synthetic_users", "8", "--max_steps", "3",
                       "--per_device_train_batch_size", "8", "--save_strategy", "no", "--disable_tqdm", "true",
                       "--report_to", "none", "--tokenizer_vocab", "400", "--learning_rate", "1e-3"])
    assert code == 0
    return out


def test_checkpoint_records_split_and_trains_only_population_days(ckpt):
    record = json.loads((ckpt / "intent_data.json").read_text())
    assert record["trained_parts"] == ["population_train"]
    split = record["split"]
    assert not set(split["population_users"]) & set(split["heldout_users"]) and len(split["heldout_users"]) == 2
    data = prepare_from_record(record)
    assert record["n_samples"] == len(data.rows_of("population_train"))


def test_eval_scores_heldout_days_and_refuses_a_leaked_split(ckpt, tmp_path, capsys):
    result = evaluate_intent(ckpt, tmp_path / "ev")
    assert set(result.metrics) == {"stllm", "user most frequent", "user Markov", "population Markov"}
    assert all(0 <= r["macro_f1"] <= r["accuracy"] + 1 for r in result.metrics.values())
    per_user = (tmp_path / "ev" / "per_user.csv").read_text().splitlines()
    assert per_user[0].startswith("method,user,n,") and len(per_user) == 1 + 2  # two held-out users
    # a record whose held-out users are also population users: refused, exit 2, one error line
    record = json.loads((ckpt / "intent_data.json").read_text())
    leaked = tmp_path / "leaked"
    leaked.mkdir()
    for f in ckpt.iterdir():
        if f.is_file():
            (leaked / f.name).write_bytes(f.read_bytes())
    record["split"]["population_users"] += record["split"]["heldout_users"][:1]
    (leaked / "intent_data.json").write_text(json.dumps(record))
    capsys.readouterr()
    assert cli_main(["eval", "intent", str(leaked), "--output_dir", str(tmp_path / "ev2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "field 'heldout_users'" in err[0] and "leaked split" in err[0]


def test_student_is_small_and_onnx_equals_pytorch(ckpt, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install -e .[onnx])")
    pytest.importorskip("onnxscript", reason="onnxscript not installed (pip install -e .[onnx])")
    teacher, tok, record = load_intent_checkpoint(ckpt)
    data = prepare_from_record(record)
    ds = data.dataset("population_train")
    student = distill(teacher, tok, torch.utils.data.Subset(ds, range(32)), StudentSpec(hidden_size=16, heads=2,
                      intermediate_size=32, head_dim=8), DistillConfig(steps=2, batch_size=8))
    assert n_parameters(student) * 2 < n_parameters(teacher)
    collate = IntentCollator(tok)
    path = export_onnx(student, collate([ds[i] for i in range(2)]), tmp_path / "s.onnx")
    others = [collate([ds[i] for i in range(5, 10)]), collate([ds[40]])]  # other batch sizes and lengths
    assert onnx_max_abs_diff(student, path, others) < 1e-4


def test_unlearning_term_hand_worked():
    pop = torch.tensor([[0.7, 0.2, 0.1], [0.6, 0.3, 0.1]])
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.2, 0.4, 0.4]]))
    targets = torch.tensor([1, 0])  # row 0 contradicts the population's top (0), row 1 agrees
    want = -(0.7 * np.log(1 - 0.5) + 0.0) / 2
    assert unlearning_term(logits, pop, targets).item() == pytest.approx(want, rel=1e-5)


def test_unlearning_pushes_contradicted_population_intent_down():
    torch.manual_seed(0)
    head = IntentHead(8, len(INTENTS), 7, 8)
    q, f = torch.randn(40, 8), torch.randn(40, len(INTENTS), 7)
    with torch.no_grad():
        top = head(q, f).argmax(-1)
    y = (top + 1) % len(INTENTS)  # the user always contradicts the population
    p_top = {}
    for lam in (0.0, 2.0):
        tuned = tune_head(head, q, f, y, TuneConfig(steps=5, lr=1e-2, unlearning=lam))
        with torch.no_grad():
            p_top[lam] = torch.softmax(tuned(q, f), -1).gather(1, top[:, None]).mean().item()
    assert p_top[2.0] < p_top[0.0]


def test_tune_users_scores_every_heldout_test_target(ckpt):
    teacher, tok, record = load_intent_checkpoint(ckpt)
    data = prepare_from_record(record)
    out = tune_users(teacher, tok, data, {"tuned": TuneConfig(steps=2)})
    assert out.rows.tolist() == data.rows_of("user_test").tolist()
    assert set(out.logits) == {"before", "tuned"} and all(v.shape == (len(out.rows), len(INTENTS))
                                                          for v in out.logits.values())
    train = data.rows_of("user_train")
    for r, n in zip(out.rows, out.n_train):  # each row carries its user's number of training targets
        assert n == (data.log.user[train] == data.log.user[r]).sum()


def test_history_weight_and_sizing_hand_worked():
    assert history_weight(np.array([30, 10, 0]), 10).tolist() == [0.75, 0.5, 0.0]
    assert history_weight(np.array([5, 0]), 0).tolist() == [1.0, 0.0]  # no sizing; no history: stay put
    with pytest.raises(ValueError, match="k must be"):
        history_weight(np.array([1]), -1)
    before, tuned = np.array([[0.0, 4.0], [0.0, 4.0]]), np.array([[4.0, 0.0], [4.0, 0.0]])
    assert np.allclose(sized_logits(before, tuned, np.array([30, 10]), 10), [[3.0, 1.0], [2.0, 2.0]])


def test_logit_adjustment_three_class_toy():
    """Calibrated posteriors p(y|x) = (0.5, 0.3, 0.2) under the prior (0.7, 0.2, 0.1): the plain argmax is the frequent
    class 0; the balanced (prior-free) score p(y|x) / p(y) = (0.71, 1.5, 2.0) picks the rare class 2 (tau = 1), and
    tau = 0.5 ranks by (0.60, 0.67, 0.63): class 1."""
    prior = np.array([0.7, 0.2, 0.1])
    logits = np.log(np.array([[0.5, 0.3, 0.2]]))
    assert adjust_logits(logits, prior, 0.0).argmax() == 0
    assert adjust_logits(logits, prior, 1.0).argmax() == 2
    assert adjust_logits(logits, prior, 0.5).argmax() == 1
    assert np.allclose(adjust_logits(logits, 10 * prior, 1.0), adjust_logits(logits, prior, 1.0))  # counts work too
    per_row = np.array([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7]])  # a per-user prior: each row its own
    assert adjust_logits(np.log([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]]), per_row, 1.0).argmax(-1).tolist() == [2, 0]
    with pytest.raises(ValueError, match="prior must be > 0"):
        adjust_logits(logits, np.array([1.0, 0.0, 0.0]), 1.0)


def test_select_posthoc_follows_validation():
    """Users 0, 1 each have validation targets that alternate 0/1; the student always says 0, the tuned head is
    right: full tuning (k = 0) wins and no adjustment is needed. With a student that is right and a tuned head
    that is wrong, the largest k wins."""
    y = np.array([0, 1, 0, 1, 0, 1, 0, 1])
    users, n = np.repeat([0, 1], 4), np.full(8, 20)
    right, wrong = np.eye(2)[y] * 3, np.eye(2)[1 - y] * 3
    always0 = np.tile([3.0, 0.0], (8, 1))
    counts = np.zeros((8, 2))
    assert select_posthoc(y, users, always0, right, n, counts, (1000, 0), (0, 1))[0] == Posthoc(k=0.0, tau=0.0)
    assert select_posthoc(y, users, right, wrong, n, counts, (0, 10, 1000), (0,))[0] == Posthoc(k=1000.0, tau=0.0)
    assert select_posthoc(y, users, always0, right, n, counts, (1000, 0), (0,), objective="pooled")[0].k == 0
    with pytest.raises(ValueError, match="objective must be one of"):
        select_posthoc(y, users, always0, right, n, counts, (0,), (0,), objective="accuracy")
    # a student that always says 0 to users whose training counts are 9 / 1 (prior 10/12, 2/12 with alpha = 1):
    # only a large enough tau flips it to recall class 1
    skewed = np.tile([9.0, 1.0], (8, 1))
    near = np.tile([1.0, 0.0], (8, 1))
    near[1::2] = [0.5, 0.0]  # the class-1 rows are the ones the student is less sure of
    got, scores = select_posthoc(y, users, near, near, n, skewed, (0,), (0, 0.2, 0.4))
    assert got == Posthoc(k=0.0, tau=0.4)  # 0.4 * log 5 = 0.64 flips only the unsure rows: all right
    assert scores["macro_f1"] == scores["accuracy"] == 1.0
    # with alpha = 9 the prior is 18/28, 10/28: log-ratio 0.59, tau 0.4 moves 0.24 and flips nothing; alpha 1 wins
    assert select_posthoc(y, users, near, near, n, skewed, (0,), (0.4,), (9.0, 1.0))[0] == Posthoc(0.0, 0.4, 1.0)


def test_select_posthoc_gap_bound_against_sklearn():
    """With ``max_gap`` (and ``min_macro``) the choice is the best pooled macro F1 among the grid points whose
    weighted - macro gap (sklearn's F1s) is below it (and macro F1 at least ``min_macro``); when none is, the
    bound is dropped."""
    from sklearn.metrics import f1_score

    rng = np.random.default_rng(0)
    y = rng.choice(4, size=120, p=[0.6, 0.25, 0.1, 0.05])
    users, n = rng.integers(0, 3, size=120), rng.integers(5, 50, size=120)
    before, tuned = rng.normal(size=(120, 4)) + 2 * np.eye(4)[y], rng.normal(size=(120, 4)) + 2.5 * np.eye(4)[y]
    before[:, 0] += 1.5  # the student leans to the frequent intent
    counts = np.bincount(users * 4 + y, minlength=12).reshape(3, 4)[users].astype(float)
    ks, taus = (0, 10, 100), (0, 0.5, 1, 2)
    table = {}
    for k in ks:
        for tau in taus:
            p = Posthoc(float(k), float(tau), 1.0)
            pred = posthoc_logits(before, tuned, n, counts, p).argmax(-1)
            macro = f1_score(y, pred, average="macro")
            table[p] = (macro, f1_score(y, pred, average="weighted") - macro)
    free, _ = select_posthoc(y, users, before, tuned, n, counts, ks, taus, objective="pooled")
    assert free == max(table, key=lambda p: table[p][0])
    bound = table[free][1]  # the unbounded choice misses its own gap
    got, scores = select_posthoc(y, users, before, tuned, n, counts, ks, taus, objective="pooled", max_gap=bound)
    feasible = [p for p in table if table[p][1] < bound]
    assert feasible and got == max(feasible, key=lambda p: table[p][0]) and got != free
    assert scores["gap"] == pytest.approx(table[got][1]) and scores["gap"] < bound
    kw = dict(objective="pooled", max_gap=bound)
    assert select_posthoc(y, users, before, tuned, n, counts, ks, taus, min_macro=table[got][0], **kw)[0] == got
    # a macro-F1 floor above every point under the gap bound, or a bound none meets: the bound is dropped
    assert select_posthoc(y, users, before, tuned, n, counts, ks, taus, min_macro=table[got][0] + 1e-6, **kw)[0] == free
    assert select_posthoc(y, users, before, tuned, n, counts, ks, taus, objective="pooled", max_gap=-1.0)[0] == free


def _floor_toy():
    """Ten targets (eight 0s, two 1s): the two 1s and four 0s score [1, 0.5], four 0s [1, -1]. Predicting 1 on
    the six near rows: accuracy 0.6, F1(0) = 8/12, F1(1) = 4/8, macro 0.5833 (all 0s: accuracy 0.8, macro 0.4444;
    all 1s: accuracy 0.2, macro 1/6)."""
    y = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0])
    logits = np.array([[1.0, 0.5]] * 6 + [[1.0, -1.0]] * 4)
    return y, logits


def test_fit_class_bias_hand_worked_with_accuracy_floor():
    y = np.array([0, 0, 0, 1])
    logits = np.array([[1.0, 0.0]] * 3 + [[1.0, 0.8]])
    bias, scores = fit_class_bias(logits, y)
    assert (logits + bias).argmax(-1).tolist() == [0, 0, 0, 1] and scores["macro_f1"] == 1.0
    y, logits = _floor_toy()
    bias, scores = fit_class_bias(logits, y)
    assert scores["accuracy"] == pytest.approx(0.6) and scores["macro_f1"] == pytest.approx(0.5 * (8 / 12 + 0.5))
    assert ((logits + bias).argmax(-1) == [1] * 6 + [0] * 4).all()
    bias, scores = fit_class_bias(logits, y, min_accuracy=0.7)  # the gain costs accuracy 0.2: refused
    assert bias.tolist() == [0, 0] and scores["accuracy"] == pytest.approx(0.8)


def test_select_posthoc_accuracy_floor_comes_first():
    """Per-user prior (8, 0) + 1 -> (0.9, 0.1): tau lifts intent 1 by tau * log 9 = 2.197 tau over intent 0, so tau
    0.25 flips the six near rows (accuracy 0.6, macro 0.5833) and tau 1 flips all (accuracy 0.2)."""
    y, logits = _floor_toy()
    n, users, counts = np.full(10, 10), np.zeros(10), np.tile([8.0, 0.0], (10, 1))
    args = (y, users, logits, logits, n, counts, (0,), (0, 0.25, 1.0), (1.0,), "pooled")
    assert select_posthoc(*args)[0].tau == 0.25
    choice, scores = select_posthoc(*args, min_accuracy=0.7)
    assert choice.tau == 0 and scores["accuracy"] == pytest.approx(0.8)
    choice, _ = select_posthoc(*args, max_gap=10.0, min_accuracy=0.9)  # nobody reaches it: the most accurate wins
    assert choice.tau == 0
    choice, scores = select_posthoc(*args, class_bias=True, min_accuracy=0.7)
    assert len(choice.bias) == 2 and scores["accuracy"] >= 0.7
    assert np.array_equal(posthoc_logits(logits, logits, n, counts, choice).argmax(-1),
                          (logits - choice.tau * np.log(user_prior(counts, 1.0)) + choice.bias).argmax(-1))


def test_logit_adjusted_tuning_loss_learns_the_balanced_posterior():
    """One input for every sample, 36 targets of intent 0 and 4 of intent 1: plain cross-entropy learns the
    shares (0.9, 0.1); the logit-adjusted loss with ``loss_tau = 1`` and the prior (0.9, 0.1) (alpha ~ 0) learns
    raw logits whose softmax is the prior-free (0.5, 0.5)."""
    torch.manual_seed(0)
    head = IntentHead(8, 2, 7, 8)
    q, f = torch.randn(1, 8).expand(40, 8), torch.randn(1, 2, 7).expand(40, 2, 7)
    y = torch.tensor([0] * 36 + [1] * 4)
    p1 = {}
    for tau in (0.0, 1.0):
        cfg = TuneConfig(steps=300, lr=5e-2, unlearning=0.0, anchor=0.0, loss_tau=tau, loss_alpha=1e-6)
        tuned = tune_head(head, q, f, y, cfg)
        with torch.no_grad():
            p1[tau] = torch.softmax(tuned(q[:1], f[:1]), -1)[0, 1].item()
    assert p1[0.0] == pytest.approx(0.1, abs=0.01) and p1[1.0] == pytest.approx(0.5, abs=0.01)


def test_logit_adjusted_tuning_raises_rare_intent_recall():
    """Two kinds of input: 30 of kind A are all intent 0; 10 of kind B are intent 1 four times, 0 six times. Plain
    cross-entropy learns p(1 | B) = 0.4 and predicts 0 on every B: recall of intent 1 is 0. The adjusted loss
    (``loss_tau`` 1, the prior smoothed towards population shares (0.5, 0.5): counts (36, 4) + (1, 1) -> (37, 5)
    / 42) learns raw scores ~ p(y | B) / prior(y): 0.6 / 0.881 = 0.68 for 0 vs 0.4 / 0.119 = 3.36 for 1, so it
    predicts 1 on every B (recall 1) and still 0 on every A (0 / 0.119 < 1 / 0.881)."""
    torch.manual_seed(0)
    head = IntentHead(8, 2, 7, 8)
    qa, qb, f = torch.randn(1, 8), torch.randn(1, 8), torch.randn(1, 2, 7)
    q, feats = torch.cat([qa.expand(30, 8), qb.expand(10, 8)]), f.expand(40, 2, 7)
    y = torch.tensor([0] * 30 + [1] * 4 + [0] * 6)
    pred = {}
    for tau in (0.0, 1.0):
        cfg = TuneConfig(steps=300, lr=5e-2, unlearning=0.0, anchor=0.0, loss_tau=tau, loss_alpha=1.0)
        tuned = tune_head(head, q, feats, y, cfg, population=np.array([0.5, 0.5]))
        with torch.no_grad():
            pred[tau] = tuned(q, feats).argmax(-1)
    rare = y == 1
    assert (pred[0.0][rare] == 1).float().mean().item() == 0.0
    assert (pred[1.0][rare] == 1).float().mean().item() == 1.0
    assert (pred[1.0][:30] == 0).all()


def test_tuning_prior_towards_population_hand_worked():
    """alpha 1 per intent, three intents: 3 pseudo-counts spread as the population's (0.5, 0.25, 0.25)."""
    got = tuning_prior(np.array([2.0, 0.0, 1.0]), 1.0, np.array([0.5, 0.25, 0.25]))
    assert np.allclose(got, np.array([3.5, 0.75, 1.75]) / 6)
    assert np.allclose(tuning_prior(np.array([2.0, 0.0, 1.0]), 1.0), [3 / 6, 1 / 6, 2 / 6])  # no population: even
    with pytest.raises(ValueError, match="population shares"):
        tuning_prior(np.array([2.0, 0.0, 1.0]), 1.0, np.array([1.0, 0.0, 0.0]))


def test_select_posthoc_chooses_the_tuning_loss_tau():
    """Heads tuned with two loss taus: the validation picks the one that predicts the targets; on a tie the first
    (the plain loss) wins."""
    y, users = np.array([0, 1, 1, 0]), np.zeros(4)
    right, wrong = np.eye(2)[y] * 3.0, np.eye(2)[1 - y] * 3.0
    n, counts = np.full(4, 10), np.tile([5.0, 5.0], (4, 1))
    got, scores = select_posthoc(y, users, wrong, {0.0: wrong, 1.0: right}, n, counts, (0,), (0,))
    assert got == Posthoc(k=0.0, tau=0.0, loss_tau=1.0) and scores["accuracy"] == 1.0
    assert select_posthoc(y, users, wrong, {0.0: right, 1.0: right}, n, counts, (0,), (0,))[0].loss_tau == 0.0


def test_user_table_probs_hand_worked():
    """One user, last intent 1: transition row (2, 0, 0), intent counts (2, 1, 0); P_u(intent) = counts + 3 pseudo-
    counts spread as the population's (0.5, 0.25, 0.25) = (3.5, 1.75, 0.75) / 6; the row gets beta = 1 of it:
    (2 + 3.5/6, 1.75/6, 0.75/6) / 3."""
    user_intent = np.zeros((1, 3, 3))
    user_intent[0, 1] = [2.0, 0.0, 0.0]
    user_intent[0, 0] = [0.0, 5.0, 0.0]  # another row: not read
    got = user_table_probs(user_intent, np.array([[2.0, 1.0, 0.0]]), np.array([0.5, 0.25, 0.25]), np.array([0]),
                           np.array([1]))
    assert np.allclose(got, [[(2 + 3.5 / 6) / 3, 1.75 / 18, 0.75 / 18]])
    assert np.allclose(got.sum(-1), 1) and (got > 0).all()
    empty = user_table_probs(user_intent, np.array([[2.0, 1.0, 0.0]]), np.array([0.5, 0.25, 0.25]), np.array([0]),
                             np.array([2]))  # an unseen row backs off to P_u(intent)
    assert np.allclose(empty, [[3.5 / 6, 1.75 / 6, 0.75 / 6]])


def test_mix_user_hand_worked():
    """p_model (0.6, 0.3, 0.1), p_user (0.1, 0.1, 0.8): n = 10, m = 30 -> lam 0.25 -> (0.475, 0.25, 0.275), which
    flips nothing; n = 30 -> lam 0.5 -> (0.35, 0.2, 0.45), which flips the argmax to the user's intent; no targets
    or no mix: the model's."""
    logits = np.log(np.array([[0.6, 0.3, 0.1]] * 3)) + 2.0  # any shift: softmax is the same
    user = np.array([[0.1, 0.1, 0.8]] * 3)
    got = np.exp(mix_user(logits, user, np.array([10, 30, 0]), 30.0))
    assert np.allclose(got, [[0.475, 0.25, 0.275], [0.35, 0.2, 0.45], [0.6, 0.3, 0.1]])
    assert got.argmax(-1).tolist() == [0, 2, 0]
    assert mix_user(logits, user, np.array([10, 30, 0]), None) is logits
    p = Posthoc(mix_m=30.0)
    out = posthoc_logits(logits, logits, np.array([10, 30, 0]), np.ones((3, 3)), p, user)
    assert np.allclose(np.exp(out), got)
    with pytest.raises(ValueError, match="pass user_probs"):
        posthoc_logits(logits, logits, np.array([10, 30, 0]), np.ones((3, 3)), p)


def test_select_posthoc_chooses_the_user_table_mix():
    """The model predicts 0 everywhere; the user's table puts 0.9 on the truth. With n = 9 targets, m = 1 gives
    lam 0.9 (all right), m = 81 gives lam 0.1 (0.1 * 0.9 + 0.9 * p_model: still the model's); a table that only
    ties the model leaves the mix off (first in the grid)."""
    y, users = np.array([0, 1, 2, 1]), np.zeros(4)
    model = np.tile(np.log([0.5, 0.25, 0.25]), (4, 1))
    table = np.full((4, 3), 0.05)
    table[np.arange(4), y] = 0.9
    n, counts = np.full(4, 9), np.tile([3.0, 3.0, 3.0], (4, 1))
    got, scores = select_posthoc(y, users, model, model, n, counts, (0,), (0,), user_probs=table,
                                 mix_ms=(None, 81.0, 1.0))
    assert got.mix_m == 1.0 and scores["accuracy"] == 1.0
    assert select_posthoc(y, users, model, model, n, counts, (0,), (0,), user_probs=table,
                          mix_ms=(None, 81.0))[0].mix_m is None
    with pytest.raises(ValueError, match="needs user_probs"):
        select_posthoc(y, users, model, model, n, counts, (0,), (0,), mix_ms=(None, 1.0))


def test_user_table_of_validation_counts_days_before_validation(ckpt):
    """The validation step's user tables count only each held-out user's days before the validation days (a
    validation target never counts itself), the test step's all their training days."""
    _, _, record = load_intent_checkpoint(ckpt)
    data = prepare_from_record(record)
    val = validation_data(data, 0.25)
    pop = population_shares(data)
    rows = val.rows_of("user_test")
    own = val.rows_of("user_train")
    c = len(INTENTS)
    trans, freq = np.zeros((len(data.log.user_ids), c, c)), np.zeros((len(data.log.user_ids), c))
    np.add.at(trans, (data.log.user[own], data.log.intent[own - 1], data.log.intent[own]), 1.0)
    np.add.at(freq, (data.log.user[own], data.log.intent[own]), 1.0)
    got = user_table_of(val, rows, pop)
    assert np.allclose(got, user_table_probs(trans, freq, pop, data.log.user[rows], data.log.intent[rows - 1]))
    assert not np.isin(rows, own).any()
    assert not np.allclose(got, user_table_of(data, rows, pop))  # all training days: the validation days count


def test_user_prior_hand_worked():
    assert np.allclose(user_prior(np.array([[2.0, 0.0, 1.0]]), 1.0), [[3 / 6, 1 / 6, 2 / 6]])
    assert np.allclose(user_prior(np.array([[0.0, 0.0]]), 0.3), [[0.5, 0.5]])
    with pytest.raises(ValueError, match="alpha must be > 0"):
        user_prior(np.array([[1.0, 0.0]]), 0.0)


def test_pipeline_predicts_every_heldout_target(tmp_path):
    """The whole population -> student -> individual pipeline, tiny: every variant predicts every held-out later-day
    target, post-hoc choices come from the grid, and a second run with ``reuse`` loads the checkpoints (the
    fresh-process footprint and ONNX steps run in bench/intent_quality.py; ONNX is tested above)."""
    from stllm.train.intent_pipeline import (
        BEFORE,
        NO_MIX,
        NO_NEIGHBOURS,
        PLAIN,
        POPULATION,
        TUNED,
        PipelineConfig,
        run_pipeline,
    )

    cfg = PipelineConfig(data="synthetic", synthetic_users=8, teacher_preset="tiny", teacher_steps=2, batch_size=8,
                         distill_samples=32,
                         student=StudentSpec(hidden_size=16, heads=2, intermediate_size=32, head_dim=8),
                         distill=DistillConfig(steps=2, batch_size=8), tune=TuneConfig(steps=2), measure=False,
                         ks=(0, 50), taus=(0, 1), reuse=True)
    r = run_pipeline(cfg, tmp_path)
    assert r.rows.tolist() == r.data.rows_of("user_test").tolist()
    assert {POPULATION, BEFORE, TUNED, PLAIN} <= set(r.preds) and len(r.preds) == 9
    assert all(p.shape == r.rows.shape for p in r.preds.values())
    assert (r.choices[PLAIN].k, r.choices[PLAIN].tau) == (0, 0)
    assert all(c.k in (0, 50) and c.tau in (0, 1) for c in r.choices.values())
    assert all(c.alpha in cfg.alphas for c in r.choices.values() if c.tau)
    assert r.sizes["student"]["parameters"] * 3 < r.sizes["teacher"]["parameters"]
    assert r.sizes["student"]["disk_bytes"] >= 4 * r.sizes["student"]["parameters"]  # float32 safetensors
    again = run_pipeline(cfg, tmp_path)
    assert all(np.array_equal(again.preds[k], r.preds[k]) for k in r.preds)
    adjusted = run_pipeline(PipelineConfig(**{**cfg.__dict__, "loss_taus": (0, 1)}), tmp_path)  # reused models
    assert {c.loss_tau for c in adjusted.choices.values()} <= {0, 1} and adjusted.choices[PLAIN].loss_tau == 0
    forced = f"{TUNED}, tuning loss tau 1"  # the tuned row at loss tau 1 alone, for the record
    assert len(adjusted.preds) == 10 and adjusted.choices[forced].loss_tau == 1
    mixed = run_pipeline(PipelineConfig(**{**cfg.__dict__, "mix_ms": (1.0, 10.0)}), tmp_path)  # reused models
    assert len(mixed.preds) == 12 and mixed.choices[TUNED].mix_m in (None, 1.0, 10.0)
    assert [mixed.choices[f"{TUNED}, user-table mix m {m}"].mix_m for m in (1, 10)] == [1.0, 10.0]  # forced
    assert all(c.mix_m is None for n, c in mixed.choices.items() if "mix m" not in n and n != TUNED)
    assert np.array_equal(mixed.preds[NO_MIX], r.preds[TUNED])  # the tuned row as it was without mix_ms
    near = run_pipeline(PipelineConfig(**{**cfg.__dict__, "neighbour_ks": (1,), "neighbour_ws": (0.5,)}), tmp_path)
    forced_nb = f"{TUNED}, neighbours K 1 w 0.5"
    assert len(near.preds) == 11 and near.choices[forced_nb].neighbours == (1, 0.5)
    assert near.choices[TUNED].neighbours in (None, (1, 0.5)) and near.choices[NO_NEIGHBOURS].neighbours is None
    assert np.array_equal(near.preds[NO_NEIGHBOURS], r.preds[TUNED])  # the tuned row as it was without neighbours
    shares = population_shares(r.data)
    assert shares.shape == (len(INTENTS),) and shares.sum() == pytest.approx(1) and (shares > 0).all()
    wide = run_pipeline(PipelineConfig(**{**cfg.__dict__, "heldout_share": 0.5}), tmp_path)  # same models reused
    assert wide.data.split.heldout_share == 0.5 and len(wide.rows) > len(r.rows)
    assert wide.data.split.population_users == r.data.split.population_users
    assert {u: wide.data.split.cutoff[u] for u in r.data.split.population_users} == {
        u: r.data.split.cutoff[u] for u in r.data.split.population_users}
    with pytest.raises(ValueError, match="not reusable"):
        run_pipeline(PipelineConfig(**{**cfg.__dict__, "split_seed": 1}), tmp_path)
    with pytest.raises(ValueError, match=r"logit_adjust 1.0\): not reusable"):  # trained with a plain loss
        run_pipeline(PipelineConfig(**{**cfg.__dict__, "logit_adjust": 1.0}), tmp_path)


def test_logit_adjust_prior_counts_training_targets_only(tmp_path):
    """``--logit_adjust`` stores tau * log(shares of the population users' earlier-day targets, +1 each) as the
    population model's loss offsets -- not the shares of all targets -- and distillation counts its own pool."""
    out = tmp_path / "pop"
    assert train_main(["--output_dir", str(out), "--synthetic_users", "8", "--max_steps", "1", "--logit_adjust", "0.5",
                       "--per_device_train_batch_size", "8", "--save_strategy", "no", "--disable_tqdm", "true",
                       "--report_to", "none", "--tokenizer_vocab", "400"]) == 0
    teacher, tok, record = load_intent_checkpoint(out)
    assert record["logit_adjust"] == 0.5
    data = prepare_from_record(record)
    train_y = data.log.intent[data.rows_of("population_train")]
    counts = np.bincount(train_y, minlength=len(INTENTS)) + 1.0
    want = 0.5 * np.log(counts / counts.sum())
    assert np.allclose(teacher.config.intent_loss_offsets, want)
    every = np.bincount(data.log.intent[data.rows], minlength=len(INTENTS)) + 1.0
    assert not np.allclose(want, 0.5 * np.log(every / every.sum()))  # held-out users' targets would change it
    pool = torch.utils.data.Subset(data.dataset("population_train"), range(0, 64, 2))
    student = distill(teacher, tok, pool, StudentSpec(hidden_size=16, heads=2, intermediate_size=32, head_dim=8),
                      DistillConfig(steps=1, batch_size=8, logit_adjust=2.0))
    pool_counts = np.bincount(train_y[0:64:2], minlength=len(INTENTS)) + 1.0
    assert np.allclose(student.config.intent_loss_offsets, 2.0 * np.log(pool_counts / pool_counts.sum()))


def test_user_profiles_hand_worked_and_nearest_users_known():
    """Three intents, an even population (every transition count 1: joint shares 1/9, intent shares 1/3), alpha 1:
    3 pseudo-counts per part. A thin user with 3 transitions 0 -> 0 has intent part (3+1, 1, 1)/6 and joint part
    (3+1/3, 1/3, ...)/6. Population: A only ever 0 -> 0, B mostly 0 (0 -> 0 x6, 0 -> 1 x2), C only 1 -> 1, D only
    2 -> 2: the thin 0-user's nearest are A then B; a user of 2 -> 2 x4 and 1 -> 1 once has D first, then C."""
    c = 3
    pop_intent = np.ones((c, c))

    def user(pairs: dict[tuple[int, int], int]) -> tuple[np.ndarray, np.ndarray]:
        t = np.zeros((c, c))
        for (a, b), k in pairs.items():
            t[a, b] = k
        return t.sum(0), t

    pool = [user({(0, 0): 10}), user({(0, 0): 6, (0, 1): 2}), user({(1, 1): 10}), user({(2, 2): 10})]
    queries = [user({(0, 0): 3}), user({(2, 2): 4, (1, 1): 1})]
    prof = user_profiles(np.stack([f for f, _ in queries]), np.stack([t for _, t in queries]), pop_intent)
    want = np.r_[np.array([4.0, 1.0, 1.0]) / 6, (np.eye(c * c)[0] * 3 + 1 / 3) / 6]
    assert np.allclose(prof[0], want)
    pool_prof = user_profiles(np.stack([f for f, _ in pool]), np.stack([t for _, t in pool]), pop_intent)
    assert nearest_users(prof, pool_prof, 2).tolist() == [[0, 1], [3, 2]]
    assert nearest_users(pool_prof, pool_prof, 1).ravel().tolist() == [0, 1, 2, 3]  # each its own nearest
    with pytest.raises(ValueError, match="k must be"):
        nearest_users(prof, pool_prof, 5)


def test_batched_tuning_equals_one_user_at_a_time_and_weights_count_samples():
    """Three users of 10, 15 and 5 samples tuned at once (padded, weight 0) give each user's :func:`tune_head`
    head (as log-probabilities: the last layer's bias is softmax-invariant, so Adam's normalised steps move it
    on rounding noise alone). A sample at weight 2 counts as the same sample twice at weight 1."""
    torch.manual_seed(0)
    c = len(INTENTS)
    head = IntentHead(8, c, 7, 8)
    q, f, y = torch.randn(30, 8), torch.randn(30, c, 7), torch.randint(0, c, (30,))
    groups = [np.arange(0, 10), np.arange(10, 25), np.arange(25, 30)]
    cfg = TuneConfig(steps=30)
    index = torch.zeros(3, 15, dtype=torch.long)
    weight = torch.zeros(3, 15)
    for i, g in enumerate(groups):
        index[i, :len(g)], weight[i, :len(g)] = torch.from_numpy(g), 1.0
    params = tune_heads_batched(head, q, f, y, index, weight, cfg)
    got = batched_head_logits(head, params, q, f, index).log_softmax(-1)
    for i, g in enumerate(groups):
        tuned = tune_head(head, q[g], f[g], y[g], cfg)
        with torch.no_grad():
            want = tuned(q[g], f[g]).log_softmax(-1)
        assert torch.allclose(got[i, :len(g)], want, atol=1e-4)
    twice = tune_heads_batched(head, q, f, y, torch.tensor([[0, 1, 2, 2]]), torch.ones(1, 4), cfg)
    double = tune_heads_batched(head, q, f, y, torch.tensor([[0, 1, 2]]), torch.tensor([[1.0, 1.0, 2.0]]), cfg)
    a, b = (batched_head_logits(head, p, q, f, torch.tensor([[0, 1, 2]])).log_softmax(-1) for p in (twice, double))
    assert torch.allclose(a, b, atol=1e-4)
    single = tune_heads_batched(head, q, f, y, torch.tensor([[0, 1, 2]]), torch.ones(1, 3), cfg)
    assert not torch.allclose(batched_head_logits(head, single, q, f, torch.tensor([[0, 1, 2]])).log_softmax(-1),
                              b, atol=1e-3)  # and the weight does matter


def test_tune_users_with_neighbours(ckpt):
    """No neighbours (K 0) is the per-user tuning; one neighbour at weight 1 moves the users with training targets."""
    teacher, tok, record = load_intent_checkpoint(ckpt)
    data = prepare_from_record(record)
    cfg = TuneConfig(steps=5)
    out = tune_users(teacher, tok, data, {"tuned": cfg}, neighbours={"k0": (cfg, Neighbours(0, 0.5)),
                                                                     "k1": (cfg, Neighbours(1, 1.0, cap=16))})
    lsm = {k: torch.from_numpy(v).log_softmax(-1) for k, v in out.logits.items()}
    assert torch.allclose(lsm["k0"], lsm["tuned"], atol=1e-4)
    moved = out.n_train > 0
    assert moved.any() and not torch.allclose(lsm["k1"][moved], lsm["tuned"][moved], atol=1e-3)
    assert torch.equal(lsm["k1"][~moved], lsm["before"][~moved])  # no training targets: the student's head


def test_select_posthoc_chooses_the_neighbour_heads():
    """A neighbour-tuned head ``(loss_tau, K, w)`` that predicts the validation targets is chosen and recorded; on a
    tie the user's own heads (first) win."""
    y, users = np.array([0, 1, 1, 0]), np.zeros(4)
    right, wrong = np.eye(2)[y] * 3.0, np.eye(2)[1 - y] * 3.0
    n, counts = np.full(4, 10), np.tile([5.0, 5.0], (4, 1))
    got, _ = select_posthoc(y, users, wrong, {0.0: wrong, (0.0, 5, 0.3): right}, n, counts, (0,), (0,))
    assert got.neighbours == (5, 0.3) and got.head == (0.0, 5, 0.3)
    tie, _ = select_posthoc(y, users, wrong, {0.0: right, (0.0, 5, 0.3): right}, n, counts, (0,), (0,))
    assert tie.neighbours is None and tie.head == 0.0
