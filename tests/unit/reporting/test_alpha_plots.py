"""α entropy per group and the α evolution figure with its entropy panel."""

from __future__ import annotations

import math

from fednas.reporting.plots import alpha_entropies, plot_alpha_evolution


def test_alpha_entropies_of_uniform_and_committed_rows():
    k = 5
    ent = alpha_entropies({"normal": [[1 / k] * k] * 3, "reduce": [[1, 0, 0, 0, 0]] * 2})
    assert math.isclose(ent["normal"], math.log(k), rel_tol=1e-9)
    assert ent["reduce"] < 1e-9


def test_alpha_evolution_figure_has_an_entropy_panel(tmp_path):
    rows = [{"phase": "search", "step": s, "alpha": {"normal": [[0.2 + 0.1 * s, 0.8 - 0.1 * s]]}}
            for s in (1, 2, 3)]
    path = plot_alpha_evolution(rows, ["a", "b"], tmp_path)
    assert path is not None and path.stat().st_size > 0
    assert plot_alpha_evolution([{"phase": "retrain", "step": 1}], ["a"], tmp_path) is None
