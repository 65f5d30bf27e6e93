"""Ray scheduling without a GPU: logical GPUs, fractional shares, CPU fallback."""

from __future__ import annotations

import json

import pytest
import torch

from fednas.config.loading import load_config
from simulations.simulation import backend_config

FEDERATED = ["mode=federated", "federation.rounds=1", 'phases=["search"]',
             "federation.local-steps=2", "federation.min-fit-clients=2",
             "federation.node-wait=300"]


def test_backend_config_from_scenario():
    cfg = load_config(None, ["federation.client-cpus=2", "federation.client-gpus=0.25"])
    backend = backend_config(cfg)
    assert backend["client_resources"] == {"num_cpus": 2.0, "num_gpus": 0.25, "max_restarts": -1}
    auto = backend_config(load_config())
    assert auto["client_resources"]["num_gpus"] == (0.5 if torch.cuda.is_available() else 0.0)
    remote = backend_config(load_config(None, ['federation.ray-address="10.0.0.5:6379"']))
    assert remote["init_args"] == {"address": "10.0.0.5:6379"}


def placements(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "clients.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("gpus_per_client, actors", [(0.5, 2), (1.0, 1)])
def test_logical_gpu_shares_set_concurrency_and_ids(tiny_overrides, gpus_per_client, actors):
    from simulations.simulation import run_federated

    cfg = load_config(None, tiny_overrides + FEDERATED)
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": gpus_per_client},
               "init_args": {"num_cpus": 4, "num_gpus": 1, "include_dashboard": False}}
    run_dir, _ = run_federated(cfg, backend=backend)
    rows = placements(run_dir)
    assert len(rows) == 4
    assert {r["gpu_id"] for r in rows} == {0}  # every client saw the GPU Ray assigned it
    assert len({r["pid"] for r in rows}) == actors  # clients per declared GPU = 1 / share
    if not torch.cuda.is_available():
        assert all(r["cuda"] == 0 for r in rows)  # no CUDA: the device falls back to CPU


def test_only_flowers_deprecation_and_actor_shutdown_notices_are_dropped():
    import logging

    from simulations.quiet import QuietFlowerNotices

    def record(message: str, *args) -> logging.LogRecord:
        return logging.LogRecord("flwr", logging.WARNING, __file__, 1, message, args, None)

    quiet = QuietFlowerNotices()
    assert not quiet.filter(record("DEPRECATED FEATURE: %s", "The `run_simulation` function "
                                   "is deprecated and will be removed"))
    assert quiet.filter(record("DEPRECATED FEATURE: %s", "something else"))
    assert quiet.filter(record("client error dropped: %s", "boom"))
    assert not quiet.filter(record("Manually terminating %s", "ClientAppActor"))
    assert quiet.filter(record("Terminating the simulation: %s", "manually"))
