"""Plain transfer for DAP (issue 32): equal-complexity baselines, fine-tuning, the bench."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from fednas.compression.budget import Budget
from fednas.compression.dap import extract
from fednas.compression.dap_gates import DapGates, measure
from fednas.compression.transfer import (
    draw_tasks,
    finetune,
    magnitude_keep,
    random_keep,
    select_lr,
    transfer_accuracy,
    unit_norms,
)
from fednas.data.episodes import FewShotSet
from fednas.errors import ConfigError
from fednas.models.baselines import HandCNN
from fednas.models.conv4 import Conv4

SHAPE = (1, 8, 8)
CPU = torch.device("cpu")


def ramp_conv4(hidden: int = 6) -> Conv4:
    """A Conv-4 whose output filter ``c`` of every layer has L1 norm ∝ ``c + 1``, scaled by
    a different factor per layer (10 ** layer)."""
    model = Conv4(input_shape=SHAPE, num_classes=3, hidden=hidden, batch_stats=False)
    with torch.no_grad():
        for layer in range(4):
            conv = model.features[4 * layer]
            scale = torch.arange(1, hidden + 1, dtype=torch.float32).view(-1, 1, 1, 1)
            conv.weight.copy_(torch.ones_like(conv.weight) * scale * 10.0 ** layer
                              / conv.weight[0].numel())
    return model.eval()


def test_magnitude_keep_fits_the_budget_and_keeps_the_largest_filters():
    model = ramp_conv4()
    gates = DapGates(model, SHAPE)
    norms = torch.stack(unit_norms(model, gates))
    assert torch.allclose(norms, 10.0 ** torch.arange(4.0, dtype=torch.float64)[:, None]
                          * torch.arange(1.0, 7.0, dtype=torch.float64), rtol=1e-5)
    budget = Budget(params=0.5)
    keep = magnitude_keep(model, gates, budget)
    net = extract(model, gates, keep, budget=budget)  # measured on the built module
    params = measure(net, SHAPE)[0]
    assert params == gates.hard_cost(keep)[0] <= 0.5 * gates.full[0]
    # in every layer the kept filters are the largest ones (a suffix of the ramp) ...
    for k in keep:
        n = int(k.sum())
        assert 1 <= n < 6 and k.tolist() == [False] * (6 - n) + [True] * n
    # ... and the layer scale does not matter (norms relative to the layer mean): the same
    # kept units as a model with one scale everywhere
    flat = Conv4(input_shape=SHAPE, num_classes=3, hidden=6, batch_stats=False)
    with torch.no_grad():
        for layer in range(4):
            flat.features[4 * layer].weight.copy_(model.features[4 * layer].weight
                                                  / 10.0 ** layer)
    assert all(torch.equal(a, b) for a, b in zip(keep, magnitude_keep(flat, gates, budget),
                                                   strict=True))
    # greedy stops at the first fit: the last unit dropped was needed to fit
    scores = [n / n.mean() for n in unit_norms(model, gates)]
    dropped = max((float(s[i]), layer, i) for layer, (s, k) in enumerate(zip(scores, keep,
                                                                             strict=True))
                  for i in (~k).nonzero().flatten().tolist())
    again = [k.clone() for k in keep]
    again[dropped[1]][dropped[2]] = True
    assert gates.hard_cost(again)[0] > 0.5 * gates.full[0]


def test_magnitude_keep_on_a_linear_layer_never_empties_a_layer():
    model = HandCNN(input_shape=SHAPE, num_classes=3, width=4).eval()
    gates = DapGates(model, SHAPE)
    small = gates.smallest()[0]
    keep = magnitude_keep(model, gates, Budget(params=small))
    assert [int(k.sum()) for k in keep] == [1, 1, 1]
    assert measure(extract(model, gates, keep), SHAPE)[0] == small
    with pytest.raises(ConfigError, match="smallest"):
        magnitude_keep(model, gates, Budget(params=small - 1))


@pytest.mark.parametrize("group_size", [1, 2])
def test_random_keep_matches_the_counts_and_cost_and_is_seeded(group_size):
    model = ramp_conv4()
    gates = DapGates(model, SHAPE, group_size=group_size)
    given = magnitude_keep(model, gates, Budget(params=0.4))

    def draw(seed: int) -> list[torch.Tensor]:
        return random_keep(gates, given, torch.Generator().manual_seed(seed))

    keep = draw(0)
    assert [int(k.sum()) for k in keep] == [int(k.sum()) for k in given]
    assert gates.hard_cost(keep) == gates.hard_cost(given)
    assert gates.hard_cost(keep) == measure(extract(model, gates, keep), SHAPE)
    assert all(torch.equal(a, b) for a, b in zip(keep, draw(0), strict=True))
    assert any(not all(torch.equal(a, b) for a, b in zip(keep, draw(s), strict=True))
               for s in (1, 2, 3))
    counts = [int(k.sum()) for k in given]
    assert [int(k.sum()) for k in random_keep(gates, counts, torch.Generator())] == counts
    with pytest.raises(ConfigError, match="one count"):
        random_keep(gates, [0, *counts[1:]], torch.Generator())
    with pytest.raises(ConfigError, match="one count"):
        random_keep(gates, counts[:-1], torch.Generator())


def toy_task(seed: int = 0, ways: int = 3, shots: int = 4, queries: int = 10):
    """Noisy copies of ``ways`` random templates: an easy, separable task."""
    g = torch.Generator().manual_seed(seed)
    templates = torch.randn(ways, *SHAPE, generator=g)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(ways).repeat_interleave(n)
        return templates[y] + 0.5 * torch.randn(len(y), *SHAPE, generator=g), y

    return draw(shots), draw(queries)


def test_finetune_trains_a_new_head_and_the_body_but_not_frozen_state():
    torch.manual_seed(0)
    source = Conv4(input_shape=SHAPE, num_classes=7, hidden=4, batch_stats=False).eval()
    source.features[0].weight.requires_grad_(False)  # a frozen tensor stays as it is
    before = {k: v.clone() for k, v in source.state_dict().items()}
    support, query = toy_task()
    kw = {"lr": 0.03, "batch_size": 8, "device": CPU}
    net = finetune(source, support, steps=60, generator=torch.Generator().manual_seed(1), **kw)
    assert all(torch.equal(v, before[k]) for k, v in source.state_dict().items())  # a copy
    assert net.head.out_features == 3 and not net.training
    state = net.state_dict()
    for key, value in before.items():
        if key.startswith("head."):
            continue
        same = torch.equal(state[key], value)
        # BN statistics frozen (bn="frozen"), the frozen conv untouched, the rest trained
        assert same == ("running_" in key or "num_batches" in key or key == "features.0.weight")
    untrained = finetune(source, support, steps=0, generator=torch.Generator().manual_seed(1),
                         **kw)
    acc = transfer_accuracy(net, query, device=CPU)
    assert acc >= 0.9 and acc > transfer_accuracy(untrained, query, device=CPU) + 0.2
    again = finetune(source, support, steps=60, generator=torch.Generator().manual_seed(1), **kw)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in state.items())  # seeded
    trained_bn = finetune(source, support, steps=5, generator=torch.Generator(), bn="train", **kw)
    assert not torch.equal(trained_bn.features[1].running_mean, before["features.1.running_mean"])
    with pytest.raises(ConfigError, match="optimizer"):
        finetune(source, support, steps=1, generator=torch.Generator(), optimizer="rmsprop",
                 **kw)


def test_select_lr_uses_the_validation_tasks_and_draw_tasks_is_seeded():
    g = torch.Generator().manual_seed(0)
    templates = torch.randn(8, *SHAPE, generator=g)
    y = torch.arange(8).repeat_interleave(12)
    data = FewShotSet(templates[y] + 0.5 * torch.randn(len(y), *SHAPE, generator=g), y,
                      tuple({"name": str(c)} for c in range(8)))
    tasks = draw_tasks(data, [2, 3, 4, 5, 6], ways=3, shots=2, queries=4, count=3, seed=7)
    assert tasks[0].support_x.shape == (6, *SHAPE) and tasks[0].query_y.tolist() == [
        0] * 4 + [1] * 4 + [2] * 4
    assert all(set(t.classes) <= {2, 3, 4, 5, 6} and len(set(t.classes)) == 3 for t in tasks)
    for t in tasks:  # support and query are distinct samples of the task's classes
        for label, c in enumerate(t.classes):
            rows = torch.cat([t.support_x[t.support_y == label], t.query_x[t.query_y == label]])
            members = data.x[data.y == c]
            assert all(any(torch.equal(r, m) for m in members) for r in rows)
            assert len({tuple(r.flatten().tolist()) for r in rows}) == len(rows)
    same = draw_tasks(data, [2, 3, 4, 5, 6], ways=3, shots=2, queries=4, count=3, seed=7)
    assert all(a.classes == b.classes and torch.equal(a.query_x, b.query_x)
               for a, b in zip(tasks, same, strict=True))
    with pytest.raises(ConfigError, match="need 3 classes of >= 13"):
        draw_tasks(data, [2, 3, 4], ways=3, shots=3, queries=10, count=1, seed=0)
    model = Conv4(input_shape=SHAPE, num_classes=8, hidden=4, batch_stats=False).eval()
    lr, scores = select_lr(model, tasks, [1e-9, 0.03], seed=0, steps=30, batch_size=6,
                           device=CPU)
    assert lr == 0.03 and scores[0.03] > scores[1e-9]


@pytest.mark.slow
def test_bench_quick_prints_the_keys_and_reuses_its_records(tmp_path):
    scripts = '["latin", "armenian", "georgian", "hebrew", "thai", "ethiopic"]'
    command = [sys.executable, str(REPO / "bench" / "transfer.py"), "--quick", "--seeds", "0,1",
               "--out-dir", str(tmp_path / "out"), "--root", str(tmp_path / "glyphs"),
               "--set", f"glyph_scripts={scripts}", "--set", "glyph_letters=7",
               "--set", "glyph_samples=22", "--set", "queries=2", "--set", "ways=3"]
    first = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO)
    line = json.loads(first.stdout)
    for k in (1, 5, 20):
        for method in ("dap", "full_finetune", "random_prune", "magnitude_prune"):
            assert 0 <= line[f"{method}_{k}shot_acc_mean"] <= 100
            assert line[f"{method}_{k}shot_acc_ci95"] >= 0
    assert 0 < line["dap_params_ratio"] <= 0.5
    assert line["random_prune_params_ratio"] == line["dap_params_ratio"]
    assert line["magnitude_prune_params_ratio"] <= 0.5
    assert isinstance(line["aim_dap_ge_random_and_magnitude_all_k"], bool)
    assert isinstance(line["aim_dap_within_1pt_of_full_at_k20"], bool)
    assert line["seeds"] == [0, 1] and line["tasks_per_k"] == 2
    records = sorted((tmp_path / "out").glob("*/seed-*/summary.json"))
    assert len(records) == 2
    saved = json.loads(records[0].read_text())
    assert saved["config"]["glyph_samples"] == 22 and "dap" in saved["metrics"]["models"]
    again = subprocess.run(command, check=True, capture_output=True, text=True, cwd=REPO)
    assert "seed 0" in first.stderr and "seed 0" not in again.stderr  # reused, not rerun
    rerun = json.loads(again.stdout)
    assert {k: v for k, v in rerun.items() if k != "wall_s"} == {
        k: v for k, v in line.items() if k != "wall_s"}
