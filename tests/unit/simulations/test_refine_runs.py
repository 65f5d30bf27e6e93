"""A run dir's fixed model in the refine setting (simulations/refine_runs.py), on a run dir
written by hand: config, metrics (with or without FedEx's θ) and the model's weights."""

from __future__ import annotations

import json

import pytest
import torch

from fednas.config.loading import load_config
from fednas.config.tools import dumps_toml, to_dict
from fednas.data.run_data import run_dataset
from fednas.federated.setup import build_fixed_model
from fednas.training.train import evaluate
from simulations.cli import main
from simulations.client_app import client_setup
from simulations.refine_runs import refine_run_dir

CPU = torch.device("cpu")


def write_run(path, overrides, metrics, mode="federated"):
    cfg = load_config(None, [*overrides, f"mode={json.dumps(mode)}", "partition.num-clients=3",
                             "partition.scheme=dirichlet", "retrain.batch-size=16"])
    path.mkdir()
    (path / "config.toml").write_text(dumps_toml(to_dict(cfg)))
    (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    data = run_dataset(cfg.data, cfg.seed)
    torch.manual_seed(1)
    model = build_fixed_model(client_setup(cfg), {"kind": "baseline"}, data.input_shape,
                              data.num_classes)
    torch.save({"state_dict": model.state_dict(), "meta": {"spec": {"kind": "baseline"}}},
               path / "baseline.pt")
    return model, data


def test_global_is_the_saved_model_and_fedex_runs_fine_tune_with_thetas_choice(
        tmp_path, tiny_overrides):
    plain = [{"phase": "baseline", "step": 1}, {"phase": "baseline", "step": 2}]
    model, data = write_run(tmp_path / "plain", tiny_overrides, plain)
    out = refine_run_dir(tmp_path / "plain", device=CPU)
    whole = evaluate(model, (data.test_x, data.test_y), batch_size=64, device=CPU)
    assert out["conf"] == {} and out["diverged"] == 0
    assert out["samples"] == len(data.test_y)  # every class is some client's: all of it
    assert out["global_acc"] == pytest.approx(whole["eval_acc"], abs=1e-6)
    assert out["refine_acc"] != out["global_acc"]

    fedex = [{**row, "fedex_best": {"lr": 1e30, "momentum": 0.0}} for row in plain]
    write_run(tmp_path / "fedex", tiny_overrides, fedex)
    out = refine_run_dir(tmp_path / "fedex", device=CPU)
    assert out["conf"] == {"hp.lr": 1e30, "hp.momentum": 0.0}
    assert out["diverged"] == 3 and out["refine_acc"] == 0.0  # θ's lr was used


def test_a_run_without_weights_is_named(tmp_path, tiny_overrides):
    write_run(tmp_path / "run", tiny_overrides, [])
    (tmp_path / "run" / "baseline.pt").unlink()
    with pytest.raises(FileNotFoundError, match="baseline.pt"):
        refine_run_dir(tmp_path / "run", device=CPU)


def test_the_refine_command_prints_and_writes_and_refuses_what_it_cannot_refine(
        tmp_path, tiny_overrides, capsys):
    write_run(tmp_path / "run", tiny_overrides, [{"phase": "baseline", "step": 1}])
    assert main(["refine", str(tmp_path / "run")]) == 0
    printed = capsys.readouterr().out
    record = json.loads((tmp_path / "run" / "refine-baseline.json").read_text())
    assert f"global {100 * record['global_acc']:.2f} %" in printed
    assert "local hyperparameters: the run's own" in printed

    assert main(["refine", str(tmp_path / "run"), "--phase", "retrain"]) == 2
    assert "searched.pt" in capsys.readouterr().err
    assert main(["refine", str(tmp_path / "nowhere")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    write_run(tmp_path / "central", tiny_overrides, [], mode="centralised")
    assert main(["refine", str(tmp_path / "central")]) == 2
    assert "centralised run has no clients" in capsys.readouterr().err
