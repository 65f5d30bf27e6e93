"""summary.json's ``alpha``: how far the search moved softmax(α)."""

from __future__ import annotations

import math

import pytest

from fednas.reporting.summary import alpha_summary


def test_uniform_and_concentrated_rows():
    uniform = [[0.2] * 5]
    peaked = [[0.6, 0.1, 0.1, 0.1, 0.1]]
    metrics = [{"phase": "search", "step": 1, "alpha": {"normal": uniform, "reduce": uniform}},
               {"phase": "retrain", "step": 1},
               {"phase": "search", "step": 2, "alpha": {"normal": peaked, "reduce": uniform}}]
    a = alpha_summary(metrics)
    assert a["step"] == 2 and a["rows"] == 2
    assert a["max_softmax_ratio"] == pytest.approx((3.0 + 1.0) / 2)  # 0.6 × 5 and 0.2 × 5
    assert a["max_softmax_ratio_max"] == pytest.approx(3.0)
    assert a["entropy_uniform"] == pytest.approx(math.log(5))
    h = -(0.6 * math.log(0.6) + 4 * 0.1 * math.log(0.1))
    assert a["entropy"] == pytest.approx((h + math.log(5)) / 2)


def test_rows_of_different_sizes_and_no_search():
    a = alpha_summary([{"phase": "search", "step": 1, "alpha": {"layers": [[0.5, 0.5],
                                                                          [1.0, 0.0, 0.0]]}}])
    assert a["max_softmax_ratio"] == pytest.approx((1.0 + 3.0) / 2)
    assert a["entropy_uniform"] == pytest.approx((math.log(2) + math.log(3)) / 2)
    assert alpha_summary([{"phase": "retrain", "step": 1}]) is None
