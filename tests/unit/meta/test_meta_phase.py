"""The meta phase wired in: [meta] config, pipeline end to end, `fednas meta` on a run dir."""

from __future__ import annotations

import json

import pytest
from conftest import REPO, tiny_meta

from fednas.config.loading import load_config
from fednas.errors import ConfigError
from fednas.meta.setup import meta_setup
from simulations.cli import main

SCENARIO = REPO / "simulations" / "fewshot_glyphs.toml"
@pytest.mark.parametrize("override, needle", [
    ("meta.bogus=1", "unknown config key 'meta.bogus'"),
    ("meta.atnas.populaton=4", "unknown config key 'meta.atnas.populaton'"),
    ("meta.ways=1", "meta.ways: must be >= 2"),
    ('meta.algorithm="reptile"', "meta.algorithm: 'reptile' is not allowed"),
    ('meta.models=["resnet"]', "meta.models: ['resnet'] not allowed"),
    ("meta.split=[0.5, 0.5, 0.5]", "meta.split: three shares"),
    ("meta.shots=[0]", "meta.shots: must be >= 1"),
    ('meta.dataset="digits"', "meta.split-by: 'script' needs meta.dataset = 'glyphs'"),
    ('meta.glyph-scripts=["klingon"]', "meta.glyph-scripts: ['klingon'] unknown"),
    ('meta.models=["conv4"]', "meta.conv4-hidden: 0 matches the searched subnet's params"),
    ('phases=["meta"]', "meta.models: ['searched'] need the 'search' phase"),
    ("meta.atnas.tournament=9", "meta.atnas.tournament: must be <= meta.atnas.population"),
    ('meta.algorithm="metasgd"', "meta.algorithm: AT-NAS supports"),
    ('space.name="width"', "meta.atnas.enabled: AT-NAS searches the cell space"),
])
def test_bad_meta_config_names_the_key(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(SCENARIO, [override])
    assert needle in str(err.value)


def test_fewshot_scenario_validates():
    cfg = load_config(SCENARIO)
    assert cfg.phases[-1] == "meta" and "search" in cfg.phases and cfg.mode == "federated"
    m = cfg.meta
    assert (m.dataset, m.ways, m.shots, m.split_by) == ("glyphs", 5, (1, 5), "script")
    assert m.eval_tasks >= 600 and m.atnas.enabled
    assert set(m.models) == {"searched", "conv4", "conv4-pretrained"}  # with its baseline
    assert "baseline" in cfg.phases and cfg.baseline.model == "conv4"
    assert load_config(None).meta.models == ("searched", "conv4")  # the section's defaults
    assert "meta" not in load_config(None).phases
    with pytest.raises(ConfigError, match="meta.clients: federated Reptile would train"):
        load_config(SCENARIO, ["meta.clients=2", 'meta.models=["searched", "supernet"]'])


@pytest.mark.slow
def test_meta_phase_end_to_end_and_on_a_run_dir(tiny_overrides, tmp_path, capsys):
    from simulations.pipeline import Pipeline

    cfg = load_config(None, [*tiny_overrides, 'phases=["search", "retrain", "meta"]',
                             "search.epochs=1", "retrain.epochs=1", *tiny_meta(tmp_path),
                             'meta.models=["searched", "conv4", "metanas"]',
                             "meta.metanas.iterations=1", 'meta.atnas.prior="metanas"'])
    run_dir, summary = Pipeline(cfg).run()
    meta = json.loads((run_dir / "meta.json").read_text())
    assert summary["meta"]["models"].keys() == meta["models"].keys() == {
        "searched", "conv4", "metanas"}
    metanas = meta["models"]["metanas"]
    assert metanas["init"] == "supernet.pt"
    for shot in ("1shot", "2shot"):  # α meta-learned per shot count, then its subnet
        e = metanas[shot]
        genes = len(e["genotype"]["normal"]) + len(e["genotype"]["reduce"])
        assert e["genotype"]["space"] == "cell" and 0 <= e["changed_genes"] <= genes
        assert e["params"] > 0 and 0 < e["supernet_meta_train_s"] < e["meta_train_s"]
    assert "meta" in summary["timings"] and json.loads(
        (run_dir / "summary.json").read_text())["meta"]["atnas"]["2shot"]["tasks"] == 2
    assert meta["classes"]["test"] > 0 and meta["test_groups"]  # unseen scripts
    searched, conv4 = meta["models"]["searched"], meta["models"]["conv4"]
    assert searched["init"] == "searched.pt" and conv4["init"] == "scratch"
    assert abs(conv4["params"] - searched["params"]) < 0.2 * searched["params"]
    assert searched["flops"] > searched["params"] and conv4["flops"] > conv4["params"]
    entries = [m[shot] for m in (searched, conv4) for shot in ("1shot", "2shot")]
    for e in [*entries, meta["atnas"]["1shot"], meta["atnas"]["2shot"]]:
        assert 0.0 <= e["acc"] <= 1.0 and e["ci95"] >= 0.0 and e["meta_train_s"] > 0
    atnas = meta["atnas"]["1shot"]
    assert atnas["tasks"] == 2 and len(atnas["per_task"]) == 2
    assert all(t["params"] <= atnas["max_params"] for t in atnas["per_task"])
    assert {"genotype", "search_s", "adapt_s"} <= set(atnas["per_task"][0])
    assert (atnas["init"], atnas["init_source"]) == ("retrained", "metanas model")  # its weights
    assert atnas["fitness_measure"] == "loss" and all(t["fitness"] < 0 for t in atnas["per_task"])
    for shot in ("1shot", "2shot"):  # α prior: the metanas model's meta-learned supernet
        prior = meta["atnas"][shot]
        assert (prior["prior"], prior["prior_source"]) == ("metanas", "metanas model")
        assert prior["prior_genotype"] == metanas[shot]["genotype"]
        assert prior["reused_s"] == metanas[shot]["supernet_meta_train_s"] <= prior["prior_s"]
        assert prior["meta_train_s"] > prior["prior_s"]  # MetaNAS's seconds are AT-NAS's too
        assert 0 <= prior["mode_chosen"] <= prior["tasks"]
    assert "per_task" not in summary["meta"]["atnas"]["1shot"]
    logged = {json.loads(line)["phase"] for line in (run_dir / "metrics.jsonl").open()}
    assert {"meta-searched-1shot", "meta-conv4-2shot", "meta-metanas-supernet-1shot",
            "meta-metanas-1shot"} <= logged

    # the same run dir again, through the CLI: Conv-4 alone by federated Reptile, 2-shot
    code = main(["meta", str(run_dir), "--set", 'meta.models=["conv4"]', "--set",
                 "meta.conv4-hidden=8", "--set", "meta.shots=[2]", "--set", "meta.clients=2",
                 "--set", "meta.local-steps=2", "--set", "meta.atnas.enabled=false", "--set",
                 "meta.atnas.params-ratio=0"])
    assert code == 0 and "conv4" in capsys.readouterr().out
    again = json.loads((run_dir / "meta.json").read_text())
    assert again["training"] == "federated reptile, 2 clients"
    assert list(again["models"]) == ["conv4"] and "2shot" in again["models"]["conv4"]
    assert "1shot" not in again["models"]["conv4"] and not again["atnas"]
    assert main(["meta", str(run_dir), "--set", "search.epochs=3"]) == 2
    assert "only meta.* and runtime.*" in capsys.readouterr().err

    # the first run's settings again: every network comes from the run dir, none is trained
    lines = len((run_dir / "metrics.jsonl").read_text().splitlines())
    assert main(["meta", str(run_dir)]) == 0
    reloaded = json.loads((run_dir / "meta.json").read_text())
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == lines
    for name, model in meta["models"].items():
        for shot in ("1shot", "2shot"):
            first, again = model[shot], reloaded["models"][name][shot]
            assert (run_dir / first["weights"]).is_file() and not first["reused"]
            assert again["reused"] and again["weights"] == first["weights"]
            assert again["acc"] == first["acc"]  # seconds: as saved (rounded to µs)
            assert again["meta_train_s"] == pytest.approx(first["meta_train_s"], abs=1e-4)
    assert metanas["1shot"]["supernet_weights"].startswith("meta-metanas-supernet-1shot-")
    for shot in ("1shot", "2shot"):
        first, again = meta["atnas"][shot], reloaded["atnas"][shot]
        assert (run_dir / first["weights"]).is_file() and again["reused"] and not first["reused"]
        assert [t["genotype"] for t in again["per_task"]] == [
            t["genotype"] for t in first["per_task"]]
        assert (again["acc"], again["prior_genotype"]) == (first["acc"], first["prior_genotype"])
        assert again["meta_train_s"] == pytest.approx(first["meta_train_s"], abs=1e-4)

    # AT-NAS with the α prior and no metanas model of its settings: MetaNAS on its own supernet
    own = ["--set", 'meta.models=["searched"]', "--set", "meta.shots=[1]", "--set",
           "meta.metanas.arch-lr=0.02"]
    assert main(["meta", str(run_dir), *own]) == 0
    result = json.loads((run_dir / "meta.json").read_text())
    prior = result["atnas"]["1shot"]
    assert (prior["prior"], prior["prior_source"]) == ("metanas", "own metanas search")
    assert prior["prior_s"] > 0 and prior["meta_train_s"] > prior["prior_s"]
    assert prior["init_source"] == "searched.pt over supernet.pt"  # its MetaNAS starts there
    assert not prior["reused"] and result["models"]["searched"]["1shot"]["reused"]
    assert "meta-atnas-prior-1shot" in {json.loads(line)["phase"]
                                        for line in (run_dir / "metrics.jsonl").open()}
    # another temperature: AT-NAS's supernet trains again, from the saved MetaNAS prior
    assert main(["meta", str(run_dir), *own, "--set", "meta.atnas.temperature=0.5"]) == 0
    warm = json.loads((run_dir / "meta.json").read_text())["atnas"]["1shot"]
    assert warm["prior_source"] == "own metanas search (saved)" and not warm["reused"]
    assert warm["prior_genotype"] == prior["prior_genotype"] and warm["weights"] != prior["weights"]
    assert len(list(run_dir.glob("meta-atnas-prior-1shot-*.pt"))) == 1

    # a scenario whose only phase is meta: Conv-4 from scratch, no search dataset
    scenario = tmp_path / "conv4_only.toml"
    scenario.write_text('name = "conv4-only"\nphases = ["meta"]\n[meta]\n'
                        'models = ["conv4"]\nconv4-hidden = 8\nshots = [2]\n')
    out = tmp_path / "only"
    overrides = [a for o in tiny_meta(tmp_path) if not o.startswith(("meta.atnas", "meta.conv4"))
                 and not o.startswith("meta.shots") for a in ("--set", o)]
    assert main(["meta", str(scenario), "--out-dir", str(out), *overrides]) == 0
    (only,) = out.iterdir()
    summary = json.loads((only / "summary.json").read_text())
    assert list(summary["meta"]["models"]) == ["conv4"] and (only / "meta.json").is_file()


def test_federated_reptile_keeps_client_classes_disjoint_and_learns(tmp_path):
    import numpy as np
    import torch

    from fednas.data.episodes import split_classes
    from fednas.data.fewshot import load_fewshot
    from fednas.meta.fedmeta import client_classes, client_samplers, federated_reptile, server_step
    from fednas.models.conv4 import Conv4

    data = load_fewshot("digits", tmp_path)
    split = split_classes(data, (0.6, 0.0, 0.4), seed=0)
    pool = data.subset(split.train)
    parts = client_classes(pool, 2, 3, seed=0)
    assert sorted(np.concatenate(parts).tolist()) == sorted(split.train.tolist())
    assert not set(parts[0]) & set(parts[1]) and min(map(len, parts)) >= 3
    samplers = client_samplers(pool, 2, ways=3, shots=1, queries=1, seed=0)
    for part, sampler in zip(parts, samplers, strict=True):
        assert all(set(sampler.sample().classes) <= set(part.tolist()) for _ in range(5))
    with pytest.raises(ConfigError, match="meta.clients"):
        client_classes(pool, 3, 3, seed=0)

    model = torch.nn.Linear(2, 1)
    w = model.weight.detach().clone()
    server_step(model, [[torch.ones(1, 2), torch.zeros(1)],
                        [3 * torch.ones(1, 2), torch.zeros(1)]], 0.5)
    assert torch.allclose(model.weight, w + 1.0)  # θ + ε · mean(Δ) = θ + 0.5 · 2

    torch.manual_seed(0)
    net = Conv4(input_shape=(1, 8, 8), num_classes=3, hidden=8)
    losses: list[float] = []
    federated_reptile(net, pool, clients=2, ways=3, shots=1, queries=5, rounds=12,
                      meta_batch=1, inner_steps=5, inner_lr=0.05, seed=0,
                      callback=lambda r: losses.append(r["loss"]))
    assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3]), losses


@pytest.mark.slow
def test_eval_split_val_scores_meta_val_tasks_for_model_selection(tmp_path, capsys):
    scenario = tmp_path / "conv4_only.toml"
    scenario.write_text('name = "conv4-only"\nphases = ["meta"]\n[meta]\n'
                        'models = ["conv4"]\nconv4-hidden = 8\nshots = [2]\n')
    sets = [a for o in tiny_meta(tmp_path) if not o.startswith(("meta.atnas", "meta.conv4"))
            and not o.startswith("meta.shots") for a in ("--set", o)]
    accs = {}
    for where in ("test", "val"):
        out = tmp_path / where
        assert main(["meta", str(scenario), "--out-dir", str(out), *sets,
                     "--set", f'meta.eval-split="{where}"']) == 0
        (run,) = out.iterdir()
        meta = json.loads((run / "meta.json").read_text())
        assert meta["eval_split"] == where
        accs[where] = meta["models"]["conv4"]["2shot"]["acc"]
    assert "(meta-val)" in capsys.readouterr().err
    assert accs["test"] != accs["val"]  # other classes, same seeds and model
    assert main(["meta", str(scenario), "--out-dir", str(tmp_path / "none"), *sets,
                 "--set", 'meta.eval-split="val"', "--set", "meta.split=[0.8, 0.0, 0.2]"]) == 2
    assert "meta.eval-split: 'val' but the split gives that part no classes" in \
        capsys.readouterr().err


def test_task_sizes_fail_before_the_search_starts(tiny_overrides, tmp_path):
    from simulations.pipeline import Pipeline

    cfg = load_config(None, [*tiny_overrides, 'phases=["search", "meta"]', *tiny_meta(tmp_path),
                             "meta.queries=5"])
    with pytest.raises(ConfigError, match=r"meta.shots: 3-way 2-shot tasks with meta.queries = "
                                          r"5 need >= 3 classes of >= 7 samples in meta-train; "
                                          r"it has \d+ classes, the smallest 6 .*glyph-samples"):
        Pipeline(cfg).run()
    assert not (tmp_path / "runs").exists()


def test_meta_client_shares_fail_before_the_search_starts(tiny_overrides, tmp_path):
    from simulations.pipeline import Pipeline

    cfg = load_config(None, [*tiny_overrides, 'phases=["search", "meta"]', *tiny_meta(tmp_path),
                             "meta.clients=50"])
    with pytest.raises(ConfigError, match=r"meta.clients: 50 clients share \d+ meta-train "
                                          r"classes, fewer than meta.ways = 3"):
        Pipeline(cfg).run()
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("stride", [0, 1, 2])
def test_meta_stem_stride_sets_every_search_space_network(stride):
    import torch

    from fednas.meta.models import meta_space, searched_model

    cfg = load_config(SCENARIO, [f"meta.stem-stride={stride}"])  # the search's stride: 2
    want = stride or cfg.space.cell.stem_stride
    space = meta_space(meta_setup(cfg), (1, 28, 28), cfg.meta.ways, with_none=True)
    subnet = searched_model(meta_setup(cfg), space.genotype(), (1, 28, 28))
    for model in (space, subnet):
        strides = [m.stride[0] for m in model.stem.modules() if isinstance(m, torch.nn.Conv2d)]
        assert strides == [want]
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, cfg.meta.ways)
    with pytest.raises(ConfigError, match="meta.stem-stride"):
        load_config(SCENARIO, ["meta.stem-stride=3"])
