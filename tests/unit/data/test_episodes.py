"""Class-disjoint splits (by class and by script) and N-way K-shot episode layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fednas.data.episodes import (
    Episode,
    episode_from_batch,
    split_classes,
    split_support,
)
from fednas.data.fewshot import load_fewshot
from fednas.data.glyphs import GlyphOptions

SCRIPTS = ("latin", "greek", "cyrillic", "armenian", "georgian", "hebrew")
GLYPHS = GlyphOptions(scripts=SCRIPTS, max_per_script=6, samples_per_class=6)


@pytest.fixture(scope="session")
def glyph_set(tmp_path_factory):
    """A small glyph set (6 scripts × ≤6 letters × 6 samples), rendered once per session."""
    return load_fewshot("glyphs", tmp_path_factory.mktemp("glyphs"), glyph_options=GLYPHS)


def test_split_by_class_is_disjoint_complete_and_seeded():
    labels = np.repeat(np.arange(20), 3)
    split = split_classes(labels, (0.6, 0.2, 0.2), seed=3)
    parts = [set(split.train), set(split.val), set(split.test)]
    assert [len(p) for p in parts] == [12, 4, 4]
    assert set.union(*parts) == set(range(20)) and sum(map(len, parts)) == 20
    assert split.describe() == split_classes(labels, (0.6, 0.2, 0.2), seed=3).describe()
    assert split.describe() != split_classes(labels, (0.6, 0.2, 0.2), seed=4).describe()
    idx = split.indices(labels, "test")
    assert set(labels[idx]) == parts[2] and len(idx) == 12
    empty_val = split_classes(labels, (0.8, 0.0, 0.2), seed=0)
    assert len(empty_val.val) == 0 and len(empty_val.train) == 16


def test_split_by_script_keeps_test_scripts_unseen(glyph_set):
    split = split_classes(glyph_set, (0.5, 0.17, 0.33), by="script", seed=0)
    scripts = [{glyph_set.classes[i]["script"] for i in split.part(p)}
               for p in ("train", "val", "test")]
    assert all(scripts)
    assert not (scripts[0] & scripts[1] or scripts[0] & scripts[2] or scripts[1] & scripts[2])
    assert set.union(*scripts) == set(SCRIPTS)
    ids = [set(split.part(p)) for p in ("train", "val", "test")]
    assert not (ids[0] & ids[2]) and sum(map(len, ids)) == len(glyph_set.classes)
    assert split.describe()["groups"]["test"] == sorted(scripts[2])
    assert split_classes(glyph_set.classes, (0.5, 0.17, 0.33), by="script",
                         seed=0).describe() == split.describe()


def test_split_rejects_bad_requests():
    labels = np.arange(10)
    with pytest.raises(ValueError, match="needs per-class metadata"):
        split_classes(labels, by="script")
    with pytest.raises(ValueError, match="summing to 1"):
        split_classes(labels, (0.5, 0.2, 0.2))
    with pytest.raises(ValueError, match="too few groups"):
        split_classes([{"g": "a"}, {"g": "a"}, {"g": "b"}], (0.4, 0.3, 0.3), by="g")


def test_episode_from_batch_is_class_major_with_remapped_labels():
    ways, shots, queries = 3, 2, 4
    y = torch.arange(ways).repeat(shots + queries)[torch.randperm(18, generator=torch.Generator()
                                                                  .manual_seed(0))]
    x = torch.arange(18, dtype=torch.float32).view(18, 1, 1, 1) + 100 * y.view(18, 1, 1, 1)
    ep = episode_from_batch(x, y, ways=ways, shots=shots, queries=queries, classes=[7, 2, 9])
    assert ep.support_x.shape == (ways * shots, 1, 1, 1)
    assert ep.query_x.shape == (ways * queries, 1, 1, 1)
    assert ep.support_y.tolist() == [0, 0, 1, 1, 2, 2]
    assert ep.query_y.tolist() == [c for c in range(ways) for _ in range(queries)]
    assert ep.classes == (7, 2, 9) and ep.ways == 3
    assert torch.equal(ep.support_x.flatten() // 100, ep.support_y.float())
    all_x = set(ep.support_x.flatten().tolist()) | set(ep.query_x.flatten().tolist())
    assert len(all_x) == 18  # support and query never share a sample
    with pytest.raises(ValueError, match="expected shots"):
        episode_from_batch(x, y, ways=ways, shots=3, queries=4)


def test_split_support_holds_out_shots_per_class():
    x = torch.arange(12, dtype=torch.float32).view(12, 1, 1, 1)
    ep = Episode(x[:9], torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2]), x[9:], torch.tensor([0, 1, 2]),
                 (4, 5, 6))
    sub = split_support(ep, holdout=1)
    assert sub.support_y.tolist() == [0, 0, 1, 1, 2, 2] and sub.query_y.tolist() == [0, 1, 2]
    assert sub.query_x.flatten().tolist() == [2.0, 5.0, 8.0] and sub.classes == ep.classes
    with pytest.raises(ValueError, match="shots >= 2"):
        split_support(ep, holdout=3)


def test_load_fewshot_pools_every_sample(tmp_path, glyph_set):
    digits = load_fewshot("digits", tmp_path)
    assert digits.x.shape == (1797, 1, 8, 8) and digits.x.dtype == torch.float32
    assert 0.0 <= float(digits.x.min()) and float(digits.x.max()) <= 1.0
    assert len(digits.classes) == 10 and digits.classes[3] == {"name": "3"}
    assert glyph_set.input_shape == (1, 28, 28)
    assert {c["script"] for c in glyph_set.classes} == set(SCRIPTS)
    sub = glyph_set.subset([0, 2])
    assert set(sub.class_ids()) == {0, 2} and len(sub.y) == 12


def test_sampled_episodes_have_shapes_and_stay_in_their_split(glyph_set):
    from fednas.meta.learners import TaskSampler, fixed_tasks

    split = split_classes(glyph_set, (0.5, 0.17, 0.33), by="script", seed=0)
    train = TaskSampler(glyph_set.subset(split.train), ways=5, shots=1, queries=2, seed=0)
    test = fixed_tasks(glyph_set.subset(split.test), ways=5, shots=2, queries=3, num_tasks=4,
                       seed=0)
    seen_train, seen_test = set(), set()
    for _ in range(4):
        ep = train.sample()
        assert ep.support_x.shape == (5, 1, 28, 28) and ep.query_x.shape == (10, 1, 28, 28)
        assert ep.support_y.tolist() == [0, 1, 2, 3, 4]
        assert ep.query_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
        seen_train |= set(ep.classes)
    for i in range(len(test)):
        ep = test[i]
        assert ep.support_x.shape == (10, 1, 28, 28) and ep.query_x.shape == (15, 1, 28, 28)
        assert ep.support_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
        assert len(set(ep.classes)) == 5
        seen_test |= set(ep.classes)
        # the remapped label really is the original class: same images as the pool's
        for label, cls in enumerate(ep.classes):
            pool = glyph_set.x[glyph_set.y == cls].flatten(1)
            for img in ep.support_x[ep.support_y == label].flatten(1):
                assert (pool == img).all(1).any()
    assert seen_train <= set(split.train) and seen_test <= set(split.test)
    assert not seen_train & seen_test
