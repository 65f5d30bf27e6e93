"""End-to-end federated runs (Flower simulation on Ray) on digits, and SIGKILL + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fednas.config.loading import load_config
from fednas.reporting.rundir import read_metrics

pytestmark = pytest.mark.slow

FEDERATED = ["mode=federated", "federation.rounds=2", "federation.subnet-rounds=2",
             "federation.shard-size=2", "federation.local-steps=3", "federation.min-fit-clients=2",
             "federation.fraction-evaluate=1.0", "federation.node-wait=300"]


def strip_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("wall_s")} for r in records]


def test_two_rounds_four_clients_on_digits(tiny_overrides):
    from simulations.simulation import run_federated

    cfg = load_config(None, tiny_overrides + FEDERATED + [
        'phases=["search", "retrain", "random", "compress", "same-size", "baseline", "pruned"]',
        "compression.params=0.9", "compression.epochs=2", "compression.feddf=true",
        "compression.feddf-steps=3", "compression.fine-tune-rounds=1",
        "compression.casd-every=1", "federation.bn-stats=server"])
    run_dir, summary = run_federated(cfg)
    metrics = read_metrics(run_dir)
    # retrain.protocol equal-total: the fresh CNN trains the search's 2 rounds + 2
    assert [m["phase"] for m in metrics] == (["search"] * 2 + ["retrain"] * 2 + ["random"] * 2
                                             + ["compress", "same-size"] + ["baseline"] * 4
                                             + ["pruned"])
    for m in metrics:
        assert m["clients_ok"] == 4 and m["client_errors"] == 0 and m["round_failed"] == 0
        assert m["bytes_down"] > 0 and m["bytes_up"] > 0
        assert 0.0 <= m["test_acc"] <= 1.0
    search = [m for m in metrics if m["phase"] == "search"]
    assert all("genotype" in m and m["genotype"]["space"] == "cell" for m in search)
    assert all("client_val_acc" in m for m in metrics if m["phase"] != "search")
    for name in ("genotype.json", "supernet.pt", "searched.pt", "baseline.pt", "summary.json",
                 "checkpoints/latest.pt", "plots/search_curves.png", "plots/alpha_heatmap.png",
                 "plots/alpha_evolution.png", "clients.jsonl"):
        assert (run_dir / name).is_file(), name
    assert set(summary["models"]) == {"searched", "random", "baseline", "distilled",
                                      "same_size", "pruned"}
    models, budget = summary["models"], json.loads((run_dir / "compression.json").read_text())
    limit = budget["budget"]["limit_params"]
    assert limit == int(0.9 * models["baseline"]["params"])
    for name in ("distilled", "same_size", "pruned"):  # measured by the run, within budget
        assert models[name]["within_budget"] and models[name]["params"] <= limit
    assert models["distilled"]["genotype"] == models["same_size"]["genotype"]
    assert models["distilled"]["teacher"]["kind"] == "searched"
    assert models["pruned"]["pruned_from"] == "trained baseline"
    assert [m["feddf_teachers"] for m in metrics if m["phase"] == "compress"] == [4]
    assert ["casd_block_loss" in m for m in search] == [True, False]  # not after the last
    from fednas.models.export import export, load_model

    path, info = export(run_dir, "distilled")
    assert info["metrics"]["reproduced_test_acc"] == pytest.approx(
        models["distilled"]["test_acc"], abs=1e-6)
    assert sum(p.numel() for p in load_model(path).parameters()) == models["distilled"]["params"]
    assert summary["models"]["random"]["genotype"]["space"] == "cell"
    assert (run_dir / "random.pt").is_file()
    assert summary["models"]["searched"]["rounds"] == 2
    assert (models["baseline"]["rounds"], models["baseline"]["inherited"]) == (4, "none")

    # bn-stats = "server": the exported BN statistics are the server's recalibration of the
    # exported weights on its own val images, not the clients' averages
    from fednas.training.train import recalibrate_bn
    from simulations.client_app import local_clients

    saved = torch.load(run_dir / "searched.pt")["state_dict"]
    genotype = json.loads((run_dir / "genotype.json").read_text())
    clients = local_clients(cfg)
    model = clients.fixed_model({"kind": "subnet", "genotype": genotype})
    model.load_state_dict(saved)
    proxy = clients.data.val_x[: cfg.federation.bn_calibration_samples]
    recalibrate_bn(model, proxy, batch_size=cfg.retrain.batch_size, device=torch.device("cpu"))
    stats = [k for k in saved if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.allclose(model.state_dict()[k], saved[k], atol=1e-5)
                         for k in stats)


def test_half_shards_send_fewer_bytes_than_full(tiny_overrides):
    from simulations.client_app import local_clients
    from strategies.fednas import FedNAS

    cfg = load_config(None, tiny_overrides + FEDERATED)
    space = local_clients(cfg).make_space()
    sent = {}
    for size in (0, 2):
        strategy = FedNAS(space, shard_size=size, seed=0)
        strategy._state = space.state_dict()
        sent[size] = sum(v.numel() for k, v in strategy._state.items()
                         if k in strategy._shard()[1])
    assert sent[2] < sent[0]


def run_cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "simulations", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            **kwargs)


def test_sigkill_then_resume_matches_uninterrupted_run(tiny_overrides, tmp_path):
    """With FedEx tuning the clients' HPs, so its state must survive the resume too."""
    sets = [a for o in tiny_overrides + FEDERATED + ["federation.rounds=3",
                                                     "federation.checkpoint-every=1",
                                                     "fedex.enabled=true", "fedex.configs=4"]
            for a in ("--set", o)]
    full = run_cli("run", "/dev/null", *sets, "--out-dir", str(tmp_path / "full"))
    out, _ = full.communicate(timeout=900)
    assert full.returncode == 0, out
    (full_dir,) = (tmp_path / "full").iterdir()

    victim = run_cli("run", "/dev/null", *sets, "--out-dir", str(tmp_path / "killed"))
    deadline = time.time() + 600
    while time.time() < deadline:
        dirs = list((tmp_path / "killed").glob("*/metrics.jsonl"))
        if dirs and len(dirs[0].read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=60)
    (killed_dir,) = (tmp_path / "killed").iterdir()
    assert not (killed_dir / "summary.json").exists()

    resumed = run_cli("resume", str(killed_dir))
    out, _ = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, out
    assert strip_time(read_metrics(killed_dir)) == strip_time(read_metrics(full_dir))
    assert all("fedex_theta" in m for m in read_metrics(full_dir))
    assert (full_dir / "plots" / "fedex_theta_search.png").is_file()
    for name in ("genotype.json",):
        assert (killed_dir / name).read_bytes() == (full_dir / name).read_bytes()
    a = json.loads((killed_dir / "summary.json").read_text())
    b = json.loads((full_dir / "summary.json").read_text())["models"]
    assert a["models"] == b
    search_rounds = sum(m["wall_s"] for m in read_metrics(killed_dir) if m["phase"] == "search")
    assert a["timings"]["search"] >= search_rounds  # the rounds before the kill count too
    sa = torch.load(killed_dir / "searched.pt")["state_dict"]
    sb = torch.load(full_dir / "searched.pt")["state_dict"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_rejects_non_run_dirs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "simulations", "resume", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not a fednas run directory" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_resume_of_a_run_without_checkpoint_is_a_clear_error(tiny_overrides, tmp_path):
    cfg_text = Path(tmp_path / "config.toml")
    cfg_text.write_text('mode = "federated"\n')
    proc = subprocess.run([sys.executable, "-m", "simulations", "resume", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "has no checkpoint" in proc.stderr or "fednas: error" in proc.stderr


def test_failing_clients_are_dropped_and_counted(tiny_overrides):
    """A fixed partition that raises leaves the round to the other three; under the seeded
    fault model a client raises, returns NaN, hangs past the round's timeout or kills its
    Ray worker, and the run goes on with exactly the planned clients failing."""
    from fednas.federated.faults import client_fault
    from simulations.simulation import run_federated

    cfg = load_config(None, tiny_overrides + FEDERATED + [
        'phases=["search"]', "federation.fault-partitions=[1]", "federation.fault-kind=raise"])
    run_dir, _ = run_federated(cfg)
    for m in read_metrics(run_dir):
        assert (m["clients_ok"], m["client_errors"], m["round_failed"]) == (3, 1, 0)
    cfg = load_config(None, tiny_overrides + FEDERATED + [
        'phases=["search"]', "federation.min-fit-clients=1", "federation.client-cpus=0.5",
        "federation.faults.p-exit=0.2", "federation.faults.p-hang=0.1",
        "federation.faults.p-raise=0.1", "federation.faults.p-nan=0.1",
        "federation.faults.seed=4", "federation.round-timeout=20"])
    plan = [[client_fault(cfg.federation, cfg.seed, "train.search", r, p) for p in range(4)]
            for r in (1, 2)]
    assert plan == [["nan", "exit", "raise", None], [None, "exit", None, "hang"]]
    run_dir, _ = run_federated(cfg)
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == [1, 2]  # every round ran
    for m, kinds in zip(metrics, plan, strict=True):
        assert m["actor_deaths"] == m["faults_exit"] == kinds.count("exit")
        assert m["client_errors"] == kinds.count("raise") + kinds.count("exit")
        assert m["clients_diverged"] == kinds.count("nan")
        assert m["client_timeouts"] == m["faults_hang"] == kinds.count("hang")
        assert m["clients_ok"] == kinds.count(None)
    assert json.loads((run_dir / "summary.json").read_text())["genotype"]["space"] == "cell"


def test_handshake_names_the_nodes_that_did_not_answer(task_identity):
    from types import SimpleNamespace

    from fednas.errors import FedNASError
    from simulations.handshake import wait_for_nodes

    def reply(node: int, pid: int) -> SimpleNamespace:
        return SimpleNamespace(has_error=lambda: False,
                               metadata=SimpleNamespace(src_node_id=node),
                               content={"metrics": {"partition-id": pid}})

    class Grid:  # three nodes registered, the last one never answers in time
        def get_node_ids(self):
            return [11, 12, 13]

        def send_and_receive(self, messages, timeout):
            assert len(messages) == 3 and timeout == 5.0
            return [reply(11, 0), reply(12, 1)]

    with pytest.raises(FedNASError, match=r"only 2 of 3 client nodes answered the handshake "
                                          r"within federation.node-wait = 5 s"):
        wait_for_nodes(Grid(), 3, 5.0)
    Grid.send_and_receive = lambda self, messages, timeout: [reply(11, 0), reply(12, 1),
                                                             reply(13, 2)]
    assert wait_for_nodes(Grid(), 3, 5.0) == {11: 0, 12: 1, 13: 2}
