"""Stock Flower on fednas's cross-device workload: the reference for ``bench/xdevice.py``.

``flwr.serverapp.strategy.FedAvg`` and a minimal Message-API ClientApp that trains the same
model (a subnet of ``simulations/dp_fashion.toml``'s 4-channel space, genotype given) on the
same partitions with the same local training (fednas's ``train_epoch``: SGD, batch 8, lr
0.05, the scenario's local epochs), under Flower's default simulation settings
(``run_simulation`` without a backend config: 2 CPUs per client, Flower's message pump).
Writes ``{"round_s": [...], "clients_per_round": n}`` to ``--out``: the seconds between
consecutive rounds' ends (the strategy's ``evaluate_fn`` is called after every round).

Usage: ``python bench/flower_fedavg.py --genotype G.json --rounds 3 --out flower.json
[--set KEY=VALUE ...]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

from fednas.config.loading import load_config
from fednas.federated.setup import build_fixed_model
from fednas.training.train import make_optimizer, train_epoch
from simulations.client_app import client_setup, local_clients

SCENARIO = Path(__file__).resolve().parents[1] / "simulations" / "dp_fashion.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genotype", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    cfg = load_config(SCENARIO, args.overrides)
    spec = {"kind": "subnet", "genotype": json.loads(Path(args.genotype).read_text())}
    clients = local_clients(cfg)
    model = build_fixed_model(client_setup(cfg), spec, clients.data.input_shape,
                              clients.data.num_classes)
    r, f = cfg.retrain, cfg.federation
    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        pid = int(context.node_config["partition-id"])
        (x, y), _ = local_clients(cfg).splits(pid)
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        opt = make_optimizer(r.optimizer, model.parameters(), lr=r.lr, momentum=r.momentum,
                             weight_decay=r.weight_decay)
        gen = torch.Generator().manual_seed(pid)
        for _ in range(f.local_epochs):
            stats = train_epoch(model, (x, y), optimizer=opt, batch_size=min(r.batch_size, len(y)),
                                grad_clip=r.grad_clip, generator=gen, device=torch.device("cpu"))
        return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                   "metrics": MetricRecord({"num-examples": len(y), **stats})}),
                       reply_to=msg)

    ends: list[float] = []
    server_app = ServerApp()

    @server_app.main()
    def run(grid: Grid, context: Context) -> None:
        n = cfg.partition.num_clients
        per_round = max(int(n * f.fraction_train), f.min_fit_clients)
        strategy = FedAvg(fraction_train=per_round / n, min_train_nodes=per_round,
                          min_available_nodes=n, fraction_evaluate=0.0)

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            ends.append(time.perf_counter())
            return MetricRecord({})

        strategy.start(grid=grid, initial_arrays=ArrayRecord(model.state_dict()),
                       num_rounds=args.rounds, train_config=ConfigRecord({}),
                       evaluate_fn=evaluate)

    run_simulation(server_app=server_app, client_app=client_app,
                   num_supernodes=cfg.partition.num_clients)
    if len(ends) < args.rounds + 1:
        sys.exit(f"flower_fedavg: only {len(ends) - 1} of {args.rounds} rounds finished")
    n = cfg.partition.num_clients
    Path(args.out).write_text(json.dumps({
        "round_s": [b - a for a, b in zip(ends, ends[1:], strict=False)],
        "clients_per_round": max(int(n * f.fraction_train), f.min_fit_clients)}))


if __name__ == "__main__":
    main()
