"""Shared fixtures: one torch thread (tiny tensors run faster without thread overhead).

The tests mirror the layout: ``unit/<subpackage>/`` (``fednas``'s subpackages, ``strategies``,
``simulations``) and ``e2e/`` (whole runs through the CLI or the Flower simulation).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fednas.config.loading import load_config

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"


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
