"""The random-architecture phase with ``[random]``: a size-matched draw of the same space."""

from __future__ import annotations

from conftest import federated_sets, in_process_run


def test_size_matched_random_phase(tiny_overrides, tmp_path, no_plots, task_identity):
    sets = federated_sets(tiny_overrides) + [
        'phases=["search", "retrain", "random"]', "runtime.threads=1",
        "federation.subnet-rounds=1", "random.params-tolerance=0.1", "random.draw=2"]
    _, summary, _ = in_process_run(sets)
    searched, random = summary["models"]["searched"], summary["models"]["random"]
    assert abs(random["params"] - searched["params"]) <= 0.1 * searched["params"]
    assert random["genotype"] != summary["genotype"]
