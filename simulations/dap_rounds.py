"""DAP's gates trained by Flower rounds on the clients (``compression.dap-rounds > 0``).

The server's side of :mod:`fednas.compression.dap_federated`: the full-width subnet of the
aggregated supernet (BN statistics re-estimated on the server's proxy images), gates at
their initial logits, ``dap-rounds`` rounds of the ``train.dap`` route (FedAvg of the gate
logits, weighted by the clients' example counts; the weights never change), then the same
selection and extraction under the budget as after gate training on the proxy split.
Rounds are logged as phase ``dap-gates`` and checkpointed like any other (resumable).
"""

from __future__ import annotations

from typing import Any

import torch

from fednas.compression.dap_federated import gate_config, pack, unpack
from fednas.compression.dap_gates import DapGates, masked
from fednas.compression.dap_student import extract_student, full_width_source
from fednas.federated.setup import encode_spec
from fednas.training.train import evaluate
from simulations.phase_strategy import make_strategy

PHASE = "dap-gates"


def federated_dap_student(run: Any, limits: tuple[int | None, int | None]
                          ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The student DAP extracts after ``compression.dap-rounds`` federated gate rounds on
    the federated runner ``run``, and its record (as
    :func:`fednas.compression.dap_student.dap_student`'s, with ``where = "clients"``)."""
    cfg, c, f = run.cfg, run.cfg.compression, run.cfg.federation
    space = run.trained_supernet()
    proxy_x = run.compression.proxy()[0]
    full = full_width_source(space, proxy_x, c.batch_size, run.device)
    gates = DapGates(full, run.data.input_shape, group_size=c.dap_group_size).to(run.device)
    strategy = make_strategy(None, seed=cfg.seed + 47, fraction_train=f.fraction_train,
                             min_train_nodes=f.min_fit_clients, fraction_evaluate=0.0,
                             train_route="train.dap")
    strategy.node_partitions = run.node_partitions
    spec = {"kind": "subnet", "genotype": space.max_genotype()}
    extra = {"model": encode_spec(spec), **gate_config(c, limits, c.dap_rounds)}
    test = run._server_test()

    def server_eval(state: dict[str, torch.Tensor]) -> dict[str, Any]:
        unpack(gates, state)
        keep = gates.mode()
        with masked(full, gates, [k.float().to(run.device) for k in keep]):
            result = evaluate(full, test, batch_size=cfg.runtime.eval_batch_size,
                              device=run.device)
        return {"test_loss": result["eval_loss"], "test_acc": result["eval_acc"],
                "dap_mode_params": gates.hard_cost(keep)[0],
                "dap_expected_params": float(gates.expected_cost()[0].detach())}

    state = {**{k: v.detach().cpu() for k, v in full.state_dict().items()}, **pack(gates)}
    state = run.loop.run(run.grid, PHASE, strategy, state, c.dap_rounds, (c.dap_lr, c.dap_lr),
                         extra, server_eval)
    unpack(gates, state)
    return extract_student(full, gates, limits, where="clients", rounds=c.dap_rounds,
                           labels="clients")
