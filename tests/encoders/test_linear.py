"""The shared linear solvers: logistic regression recovers known coefficients in any input units."""

import numpy as np
import pytest

from stllm.encoders.linear import fit_logistic


def test_logistic_recovers_known_coefficients_whatever_the_units():
    # y ~ Bernoulli(sigmoid(2 x0 - 1 x1 + 0.5)), 40k rows: the maximum-likelihood fit is within ~0.05 of the truth
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40_000, 2))
    y = rng.random(40_000) < 1 / (1 + np.exp(-(2 * x[:, 0] - x[:, 1] + 0.5)))
    w, b = fit_logistic(x, y[:, None], l2=0.0)
    np.testing.assert_allclose(w[:, 0], [2.0, -1.0], atol=0.06)
    assert abs(b[0] - 0.5) < 0.05
    # inputs in other units (x0 in hundredths, x1 shifted by 1000): the same model, coefficients rescaled
    w2, b2 = fit_logistic(np.c_[100 * x[:, 0], x[:, 1] + 1000], y[:, None], l2=0.0)
    np.testing.assert_allclose(w2[:, 0], [w[0, 0] / 100, w[1, 0]], rtol=1e-3)
    np.testing.assert_allclose(b2[0], b[0] - 1000 * w[1, 0], rtol=1e-3)


def test_penalty_shrinks_towards_the_base_rate_and_constant_inputs_are_ignored():
    rng = np.random.default_rng(1)
    x = np.c_[rng.normal(size=5000), np.full(5000, 3.0)]  # the second input is constant
    y = (x[:, 0] + rng.normal(size=5000) > 1.0)[:, None]
    w_free, _ = fit_logistic(x, y, l2=0.0)
    w_pen, b_pen = fit_logistic(x, y, l2=10.0)
    assert abs(w_pen[0, 0]) < 0.1 * abs(w_free[0, 0]) and w_free[1, 0] == 0 == w_pen[1, 0]
    rate = y.mean()
    assert abs(1 / (1 + np.exp(-(b_pen[0] + 3.0 * w_pen[1, 0]))) - rate) < 0.02  # ~ the base rate everywhere


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="x \\(n, D\\) and y \\(n, K\\)"):
        fit_logistic(np.zeros((3, 2)), np.zeros((4, 1)))
    with pytest.raises(ValueError, match="l2 must be >= 0"):
        fit_logistic(np.zeros((3, 2)), np.zeros((3, 1)), l2=-1)


def test_logistic_rows_keep_the_design_matrix_bounded():
    from stllm.encoders.linear import MAX_DESIGN_ENTRIES, logistic_rows

    assert MAX_DESIGN_ENTRIES == 30_000_000
    assert logistic_rows(776, 60_000) == 38_659  # the crime preset's context: 192 steps + 2 statistics, 4 channels
    assert logistic_rows(10, 60_000) == 60_000  # a short context: the asked rows
    assert logistic_rows(3_000, 60_000) == 10_000  # 30M entries / 3000 inputs: an hourly 8-week context, 8 channels
    assert logistic_rows(10**9, 5) == 1
