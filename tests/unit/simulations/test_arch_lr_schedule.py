"""search.arch-lr-schedule: α's lr cosine-annealed over the federated search rounds."""

from __future__ import annotations

import math

import pytest
from conftest import federated_sets, in_process_run

from fednas.federated.setup import local_hps


def test_rounds_send_the_annealed_arch_lr(tiny_overrides, tmp_path, no_plots, task_identity):
    sets = federated_sets(tiny_overrides) + [
        'phases=["search"]', "federation.rounds=3", "runtime.threads=1", "search.arch-lr=0.02",
        'search.arch-lr-schedule="cosine"', "search.arch-lr-min=0.002",
        f'runtime.out-dir="{tmp_path}"']
    metrics, _, grid = in_process_run(sets)
    got = [m["arch_lr"] for m in metrics if m["phase"] == "search"]
    want = [0.002 + 0.5 * 0.018 * (1 + math.cos(math.pi * r / 3)) for r in range(3)]
    assert got == pytest.approx(want)
    assert got[0] == pytest.approx(0.02) and got[0] > got[1] > got[2] > 0.002


def test_constant_schedule_sends_nothing(tiny_overrides, tmp_path, no_plots, task_identity):
    sets = federated_sets(tiny_overrides) + ['phases=["search"]', "runtime.threads=1",
                                             f'runtime.out-dir="{tmp_path}"']
    metrics, _, _ = in_process_run(sets)
    assert all("arch_lr" not in m for m in metrics)


def test_client_takes_the_rounds_arch_lr(tiny_config):
    from simulations.client_app import client_setup

    setup = client_setup(tiny_config)
    assert local_hps(setup, "search", {})["arch-lr"] == tiny_config.search.arch_lr
    assert local_hps(setup, "search", {"arch-lr": 0.5})["arch-lr"] == 0.5
    assert local_hps(setup, "search", {"arch-lr": 0.5, "hp.arch-lr": 0.25})["arch-lr"] == 0.25
