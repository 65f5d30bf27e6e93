"""Shared fixtures: one torch thread (tiny tensors run faster without thread overhead).

The tests mirror the layout: ``unit/<subpackage>/`` (``fednas``'s subpackages, ``strategies``,
``simulations``) and ``e2e/`` (whole runs through the CLI or the Flower simulation).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from flwr.app import Error, Message, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto

from fednas.config.loading import load_config

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"


def bench_module(name: str):
    """``bench/<name>.py`` imported as a module (the bench scripts are not a package; those
    that import ``bench/_common.py`` need ``bench/`` on sys.path, which this adds)."""
    import importlib.util
    import sys

    if str(REPO / "bench") not in sys.path:
        sys.path.insert(0, str(REPO / "bench"))

    spec = importlib.util.spec_from_file_location(f"{name}_bench", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_sets(root: Path) -> list[str]:
    """Overrides that make any scenario a seconds-long run on sklearn digits under ``root``."""
    return [
        "data.dataset=digits", f'data.root="{root / "cache"}"', "data.max-train=400",
        "partition.num-clients=4", "space.cell.channels=4", "space.cell.layers=2",
        "space.cell.nodes=2", "space.cell.stem-stride=1",
        'space.cell.ops=["skip_connect", "max_pool_3x3", "sep_conv_3x3"]',
        "search.epochs=2", "search.steps-per-epoch=4", "search.batch-size=16",
        "retrain.epochs=2", "retrain.batch-size=32", "baseline.width=4",
        f'runtime.out-dir="{root / "runs"}"', "runtime.progress=false",
        "runtime.eval-batch-size=256",
    ]


SCRIPTS = '["latin", "greek", "cyrillic", "armenian", "georgian", "hebrew"]'


def tiny_meta(tmp_path: Path) -> list[str]:
    """A seconds-long meta phase: 6 glyph scripts, 3-way 1/2-shot, 4 test tasks, AT-NAS on 2."""
    return [f"meta.glyph-scripts={SCRIPTS}", "meta.glyph-letters=6", "meta.glyph-samples=6",
            f'meta.root="{tmp_path / "glyphs"}"', "meta.ways=3", "meta.shots=[1, 2]",
            "meta.queries=2", "meta.meta-batch=2", "meta.iterations=2", "meta.eval-tasks=4",
            "meta.eval-inner-steps=1", "meta.log-every=1", "meta.conv4-hidden=0",
            "meta.atnas.enabled=true", "meta.atnas.population=2", "meta.atnas.generations=1",
            "meta.atnas.tournament=2", "meta.atnas.eval-tasks=2", "meta.atnas.iterations=1",
            "meta.atnas.params-ratio=1.5", "meta.atnas.augment-copies=2"]


@pytest.fixture
def tiny_overrides(tmp_path) -> list[str]:
    """:func:`tiny_sets` under the test's tmp dir."""
    return tiny_sets(tmp_path)


@pytest.fixture
def tiny_config(tiny_overrides):
    return load_config(None, tiny_overrides)


@pytest.fixture
def task_identity():
    """Flower messages need a run/task identity, which a ServerApp normally sets."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


class InProcessGrid:
    """A Grid running the real ClientApp in this process: one node (and ``Context``, whose
    ``state`` persists as in Flower's simulation engine) per partition; a route that raises
    gets an error reply, as in Flower."""

    def __init__(self, cfg) -> None:
        from flwr.app import Context

        from simulations.client_app import make_client_app

        self.app = make_client_app(cfg)
        n = cfg.partition.num_clients
        self.contexts = {1000 + i: Context(1, 1000 + i, {"partition-id": i}, RecordDict(), {})
                         for i in range(n)}

    def get_node_ids(self):
        return list(self.contexts)

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for msg in messages:
            node, route = msg.metadata.dst_node_id, msg.metadata.message_type
            wire = Message(recorddict_from_proto(recorddict_to_proto(msg.content)),
                           dst_node_id=node, message_type=route)
            try:
                reply = self.app(wire, self.contexts[node])
            except Exception as exc:  # noqa: BLE001 - Flower turns it into an error reply
                replies.append(Message(Error(code=0, reason=repr(exc)), reply_to=msg))
                continue
            replies.append(Message(recorddict_from_proto(recorddict_to_proto(reply.content)),
                                   reply_to=msg))
        return replies


def federated_sets(tiny_overrides: list[str]) -> list[str]:
    return tiny_overrides + [
        "mode=federated", 'phases=["search", "baseline"]', "partition.num-clients=3",
        "federation.rounds=1", "federation.subnet-rounds=2", "federation.local-steps=2",
        "federation.min-fit-clients=2", "federation.fraction-evaluate=0.0",
        "federation.checkpoint-every=0", "federation.node-wait=5"]


def in_process_run(sets: list[str], cohort_slots: int | None = None, resume_dir=None,
                   stop_after: tuple[str, int] | None = None):
    """A federated run of ``sets`` on an :class:`InProcessGrid`: (metrics, summary, grid).
    ``cohort_slots`` stands for the Ray worker slots that ``fednas run`` passes (cohorts);
    ``resume_dir`` and ``stop_after`` as in :func:`simulations.simulation.run_federated`."""
    from fednas.reporting.rundir import read_metrics
    from simulations.federated import FederatedPipeline

    cfg = load_config(None, sets)
    pipeline = FederatedPipeline(cfg, None, resume_dir, stop_after)
    pipeline.prepare()
    pipeline.cohort_slots = cohort_slots
    grid = InProcessGrid(cfg)
    run_dir, summary = pipeline.run_on_grid(grid)
    return read_metrics(run_dir), summary, grid


@pytest.fixture
def no_plots(monkeypatch):
    """Plots cost seconds and are not what these tests check."""
    def skip(*args, **kwargs):
        return None

    for name in ("simulations.federated.plot_curves", "simulations.federated.plot_alpha_evolution",
                 "simulations.federated.plot_fedex_theta", "simulations.runner.plot_alpha"):
        monkeypatch.setattr(name, skip)
