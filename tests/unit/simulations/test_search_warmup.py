"""Federated warm-up rounds: α stays at its initialisation while the weights train."""

from __future__ import annotations

import pytest
from conftest import federated_sets, in_process_run

from fednas.config.loading import load_config
from fednas.errors import ConfigError
from fednas.spaces.stats import alpha_snapshot


def test_alpha_is_frozen_in_warmup_rounds_only(tiny_overrides, tmp_path, no_plots,
                                               task_identity):
    from simulations.federated import FederatedPipeline

    sets = federated_sets(tiny_overrides) + ['phases=["search"]', "federation.rounds=3",
                                             "runtime.threads=1"]
    pipeline = FederatedPipeline(load_config(None, sets), None)
    pipeline.prepare()
    init = alpha_snapshot(pipeline.make_space())
    warm, _, _ = in_process_run(sets + ["federation.warmup-rounds=2",
                                        f'runtime.out-dir="{tmp_path / "w"}"'])
    cold, _, _ = in_process_run(sets + [f'runtime.out-dir="{tmp_path / "c"}"'])

    def same(alpha: dict, other: dict) -> bool:
        return all(abs(a - b) <= 1e-5 * max(1.0, abs(b))
                   for k in other for ra, rb in zip(alpha[k], other[k], strict=True)
                   for a, b in zip(ra, rb, strict=True))

    assert same(warm[0]["alpha"], init) and same(warm[1]["alpha"], init)  # rounds 1, 2
    assert not same(warm[2]["alpha"], init)  # round 3 learns α
    assert not same(cold[0]["alpha"], init)
    assert warm[0]["train_loss"] > 0  # the weights trained meanwhile


def test_warmup_must_leave_a_round_for_alpha(tiny_overrides):
    sets = federated_sets(tiny_overrides) + ["federation.rounds=2"]
    with pytest.raises(ConfigError, match="federation.warmup-rounds: 2 warm-up rounds"):
        load_config(None, sets + ["federation.warmup-rounds=2"])
    load_config(None, sets + ["federation.warmup-rounds=1"])
