"""retrain.protocol in real runs: rounds (epochs) each compared model trains, from what weights,
stated in summary.json; α's movement in summary.json."""

from __future__ import annotations

import pytest
import torch
from conftest import federated_sets, in_process_run

from fednas.config.loading import load_config

PHASES = 'phases=["search", "retrain", "random", "baseline"]'


def _phase_rounds(metrics, phase):
    return sum(m["phase"] == phase for m in metrics)


@pytest.mark.parametrize(("protocol", "sub", "base", "inherited"), [
    ("equal-total", 2, 3, "supernet"),   # search 1 round + subnet-rounds 2 for the fresh CNN
    ("scratch", 2, 2, "none"),
    ("subnet-only", 2, 2, "supernet"),
])
def test_federated_rounds_per_protocol(tiny_overrides, tmp_path, no_plots, task_identity,
                                       protocol, sub,
                                       base, inherited):
    sets = federated_sets(tiny_overrides) + [PHASES, "runtime.threads=1",
                                             f'retrain.protocol="{protocol}"',
                                             f'runtime.out-dir="{tmp_path}"']
    metrics, summary, _ = in_process_run(sets)
    models = summary["models"]
    assert summary["protocol"] == protocol
    assert [models[m]["rounds"] for m in ("searched", "random", "baseline")] == [sub, sub, base]
    assert [_phase_rounds(metrics, p) for p in ("retrain", "random", "baseline")] == [sub, sub,
                                                                                      base]
    assert (models["searched"]["inherited"], models["random"]["inherited"],
            models["baseline"]["inherited"]) == (inherited, inherited, "none")
    alpha = summary["alpha"]
    assert alpha["step"] == 1 and alpha["rows"] > 0
    assert alpha["max_softmax_ratio"] >= 1.0 and alpha["entropy"] <= alpha["entropy_uniform"]


def test_scratch_subnet_does_not_start_from_the_supernet(tiny_overrides, tmp_path, no_plots,
                                                         task_identity):
    """Under scratch the retrained subnet's first round starts from fresh weights: its first
    round's loss is that of a fresh network, not of the supernet's subnet."""
    base = federated_sets(tiny_overrides) + ['phases=["search", "retrain"]', "runtime.threads=1"]
    first = {}
    for protocol in ("equal-total", "scratch"):
        metrics, _, _ = in_process_run(base + [f'retrain.protocol="{protocol}"',
                                               f'runtime.out-dir="{tmp_path / protocol}"'])
        first[protocol] = next(m for m in metrics if m["phase"] == "retrain")["train_loss"]
    assert first["equal-total"] != pytest.approx(first["scratch"], rel=1e-3)


def test_centralised_epochs_per_protocol(tiny_overrides, tmp_path, no_plots):
    from simulations.pipeline import Pipeline

    sets = tiny_overrides + ['phases=["search", "retrain", "baseline"]', "search.epochs=1",
                             "retrain.epochs=1", f'runtime.out-dir="{tmp_path}"']
    torch.manual_seed(0)
    _, summary = Pipeline(load_config(None, sets)).run()
    models = summary["models"]
    assert (models["searched"]["epochs"], models["baseline"]["epochs"]) == (1, 2)
    assert (models["searched"]["inherited"], models["baseline"]["inherited"]) == ("supernet",
                                                                                  "none")
    assert summary["protocol"] == "equal-total" and summary["alpha"]["rows"] > 0
