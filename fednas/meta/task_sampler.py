"""N-way K-shot task sampling through learn2learn (``Taskset`` over a ``MetaDataset``).

Tasks come from l2l's ``Taskset`` with ``NWays``, ``KShots`` (``shots + queries`` per class),
``LoadData`` and ``RemapLabels``; l2l draws from Python's global :mod:`random`, so every draw
here runs on a private seeded state (the global state is left as it was).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch

from fednas.data.episodes import Episode, FewShotSet, episode_from_batch
from fednas.errors import ConfigError
from fednas.meta.l2l import l2l


@contextlib.contextmanager
def _private_random(state: random.Random) -> Iterator[None]:
    """Run l2l's draws (global ``random``) on ``state``, restoring the global state after."""
    saved = random.getstate()
    random.setstate(state.getstate())
    try:
        yield
    finally:
        state.setstate(random.getstate())
        random.setstate(saved)


class _Samples(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y.tolist()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], self.y[i]


class TaskSampler:
    """N-way K-shot episodes (plus ``queries`` per class) from the classes of ``data``.

    Parameters
    ----------
    data
        The pool, e.g. ``full.subset(split.train)``; each class needs ``shots + queries``
        samples and the pool at least ``ways`` classes.
    ways, shots, queries
        Classes per task, support and query samples per class.
    seed
        Seed of the private random state every task draw uses.
    num_tasks
        ``-1``: a fresh task per :meth:`sample`. ``n > 0``: a fixed list of ``n`` tasks,
        drawn up front and loaded on access (``sampler[i]``), as l2l's Taskset caches them.
    """

    def __init__(self, data: FewShotSet, *, ways: int, shots: int, queries: int, seed: int,
                 num_tasks: int = -1) -> None:
        if min(ways, shots) < 1 or queries < 0 or num_tasks == 0 or num_tasks < -1:
            raise ConfigError(f"meta: need ways, shots >= 1, queries >= 0 and num-tasks -1 or "
                              f"> 0 (got {ways}, {shots}, {queries}, {num_tasks})")
        ids, counts = np.unique(data.y.numpy(), return_counts=True)
        smallest = int(counts.min()) if len(counts) else 0
        if len(ids) < ways or smallest < shots + queries:
            raise ConfigError(f"meta: {ways}-way {shots}-shot with {queries} queries needs "
                              f">= {ways} classes of >= {shots + queries} samples; the pool "
                              f"has {len(ids)} classes, the smallest {smallest}")
        self.ways, self.shots, self.queries = ways, shots, queries
        labels = data.y.tolist()
        by_class: dict[int, list[int]] = {}
        for i, c in enumerate(labels):
            by_class.setdefault(c, []).append(i)
        dataset = l2l.data.MetaDataset(_Samples(data.x, data.y), labels_to_indices=by_class)
        transforms = [l2l.data.transforms.NWays(dataset, n=ways),
                      l2l.data.transforms.KShots(dataset, k=shots + queries),
                      l2l.data.transforms.LoadData(dataset),
                      l2l.data.transforms.RemapLabels(dataset)]
        self._labels = labels
        self._random = random.Random(seed)
        self.taskset = l2l.data.Taskset(dataset, task_transforms=transforms, num_tasks=num_tasks)
        if num_tasks > 0:
            with _private_random(self._random):
                for i in range(num_tasks):
                    self.taskset.sampled_descriptions[i] = self.taskset.sample_task_description()

    def _episode(self, description) -> Episode:
        x, y = self.taskset.get_task(description)
        original = [self._labels[d.index] for d in description]
        classes = {int(new): old for new, old in zip(y.tolist(), original, strict=True)}
        return episode_from_batch(x, y, ways=self.ways, shots=self.shots, queries=self.queries,
                                  classes=[classes[c] for c in range(self.ways)])

    def sample(self) -> Episode:
        """A new random task (or a random one of the fixed list)."""
        if self.taskset.num_tasks > 0:
            return self[self._random.randrange(self.taskset.num_tasks)]
        with _private_random(self._random):
            description = self.taskset.sample_task_description()
        return self._episode(description)

    def __len__(self) -> int:
        return max(self.taskset.num_tasks, 0)

    def __getitem__(self, i: int) -> Episode:
        if not 0 <= i < len(self):
            raise IndexError(f"task {i} out of range (a fixed list of {len(self)} tasks)")
        return self._episode(self.taskset.sampled_descriptions[i])


def fixed_tasks(data: FewShotSet, *, ways: int, shots: int, queries: int, num_tasks: int,
                seed: int) -> TaskSampler:
    """The same ``num_tasks`` episodes for every model compared (a sequence of Episodes)."""
    return TaskSampler(data, ways=ways, shots=shots, queries=queries, seed=seed,
                       num_tasks=num_tasks)


# ----------------------------------------------------------------------------- models
