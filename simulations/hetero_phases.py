"""The static-width baselines of device tiers (issue 31): HeteroFL, smallest-for-all and
each tier alone, at the rounds fednas's tier models get.

All three train the width space's supernet with **static widths**: client ``p`` trains only
the uniform subnet at one width ``w_p`` (every prunable layer at it: a one-hot shard, see
:func:`fednas.federated.tiers.width_mask`), so only the first ``k(w_p)`` channels of every
block travel either way and the masked mean averages each channel over the clients that
trained it. α is frozen (every round is a warm-up round for the clients, and the one-hot
shard makes the channel mixture exactly the subnet whatever α is), the sandwich rule is
off: no search happens, each client trains its width with cross-entropy.

* ``heterofl``: every client at its tier's width (HeteroFL, Diao et al. 2021: "each tier
  trains the first k channels of one fixed architecture"); tier ``t``'s model is the uniform
  subnet at ``w_t``: ``models["heterofl_<tier>"]``.
* ``smallest``: every client at the weakest tier's width (FedAvg of the model that fits every
  device): ``models["smallest_for_all"]``.
* ``tier-alone``: per tier, its own clients at its width (FedAvg without the other tiers):
  ``models["alone_<tier>"]``.

**Equal budget.** A tier's fednas model is trained by ``federation.rounds`` search rounds and
then its fine-tune rounds (``compression.fine-tune-rounds``, else ``federation.subnet-rounds``);
each baseline gets the same two stages with the same local work per round: ``<phase>``
(``federation.rounds`` rounds on the search route: ``search.batch-size``, ``search.lr``
cosine, ``federation.local-steps``) and ``<phase>:tune`` (the fine-tune rounds with
``[retrain]``'s SGD lr/momentum/weight decay/batch size over full local epochs, as FedAvg
fine-tuning does). Entries record ``rounds_total`` and ``sim_time_s`` (the straggler clock,
:mod:`fednas.federated.stragglers`). fednas's server-side distillation has no counterpart;
every baseline model's BatchNorm statistics are re-estimated on the server's proxy split
(HeteroFL's static BN: running statistics averaged over clients of other widths are not the
subnet's), then it is evaluated on the whole test split.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from fednas.compression.student import measured_cost, within
from fednas.federated.tiers import uniform_genotype, width_mask
from fednas.training.train import evaluate, recalibrate_bn
from simulations.phase_strategy import phase_strategy


class StaticWidths:
    """The baselines of the module docstring on the federated runner ``run``."""

    def __init__(self, run: Any) -> None:
        self.run = run

    @property
    def plan(self) -> list[dict[str, Any]]:
        return self.run.tiers.plan()

    def heterofl(self) -> dict[str, dict[str, Any]]:
        """Every client at its tier's width; one entry per tier."""
        of = self.run.tiers.of
        widths = {pid: self.plan[t]["width"] for pid, t in enumerate(of)}
        return self._train("heterofl", widths, range(len(self.plan)), "heterofl_{}")

    def smallest(self) -> dict[str, Any]:
        """Every client at the weakest tier's width."""
        widths = dict.fromkeys(range(len(self.run.tiers.of)), self.plan[0]["width"])
        return self._train("smallest", widths, [0], "smallest_for_all")["smallest_for_all"]

    def alone(self) -> None:
        """Each tier's width on its own clients (``run.models["alone_<tier>"]``; a resumed
        run skips the finished tiers)."""
        for t, tier in enumerate(self.plan):
            key = f"alone_{tier['name']}"
            if key not in self.run.models:
                widths = {pid: tier["width"] for pid in tier["clients"]}
                self.run.models.update(self._train(f"alone:{tier['name']}", widths, [t], key))

    # -- the shared work --------------------------------------------------------------------
    def _train(self, phase: str, widths: dict[int, float], evaluated: Any, key: str
               ) -> dict[str, dict[str, Any]]:
        """Static-width rounds of ``widths`` (partition id -> width; its clients), then one
        entry per tier in ``evaluated`` (its name formatted into ``key``)."""
        run, cfg = self.run, self.run.cfg
        f, s, r = cfg.federation, cfg.search, cfg.retrain
        t0 = time.perf_counter()
        space = run.make_space()
        clients = {node: pid for node, pid in run.node_partitions.items() if pid in widths}
        masks = {w: width_mask(space, w) for w in set(widths.values())}
        allowed = {pid: masks[w] for pid, w in widths.items()}
        flops = run.tiers.width_flops(widths)
        proxy = run.data.val_x[: f.bn_calibration_samples]
        test = run._server_test()
        tiers = [(t, self.plan[t]) for t in evaluated]

        def server_eval(state: dict[str, torch.Tensor]) -> dict[str, Any]:
            space.load_state_dict(state)
            out = {f"test_acc_{tier['name']}": self._score(space, tier["width"], proxy, test)
                   ["eval_acc"] for _, tier in tiers}
            return {"test_acc": sum(out.values()) / len(out), **out}

        tune = f"{phase}:tune"
        fine_tune = cfg.compression.fine_tune_rounds or f.subnet_rounds
        static = {"sandwich": 0}
        state = space.state_dict()
        ck = run.state.checkpoint
        if not (ck is not None and ck["phase"] == tune):  # resumed in stage 2: skip stage 1
            strategy = phase_strategy(cfg, "search", space, clients, run.state.accountant,
                                      cohorts=run.cohorts("search"), allowed=allowed,
                                      sim_times=run.tiers.sim_times(flops, 1, capped=True))
            state = run.loop.run(run.grid, phase, strategy, state, f.rounds, (s.lr, s.lr_min),
                                 {**static, "warmup-rounds": f.rounds}, server_eval)
        if fine_tune:
            strategy = phase_strategy(cfg, "search", space, clients, run.state.accountant,
                                      cohorts=run.cohorts(tune), allowed=allowed,
                                      sim_times=run.tiers.sim_times(flops, 1, capped=False))
            extra = {**static, "warmup-rounds": fine_tune, "local-steps": 0,
                     "hp.batch-size": r.batch_size, "hp.momentum": r.momentum,
                     "hp.weight-decay": r.weight_decay}
            lr_end = 0.0 if r.schedule == "cosine" else r.lr
            state = run.loop.run(run.grid, tune, strategy, state, fine_tune, (r.lr, lr_end),
                                 extra, server_eval)
        space.load_state_dict(state)
        rounds = sum(m["phase"] in (phase, tune) for m in run.rundir.metrics)
        common = {"baseline": phase.split(":")[0], "clients": sorted(widths),
                  "rounds": rounds, "rounds_total": f.rounds + fine_tune,
                  "sim_time_s": run.tiers.sim_seconds((phase, tune))}
        out = {}
        for _, tier in tiers:
            name = key.format(tier["name"])
            model, entry = self._final(space, tier, proxy)
            run.rundir.save_model(name, model, spec={"kind": "subnet",
                                                     "genotype": entry["genotype"]})
            out[name] = {**entry, **common, "wall_s": time.perf_counter() - t0}
        run.timings[phase] = run.elapsed(phase, t0)
        return out

    def _subnet(self, space: Any, width: float, proxy: torch.Tensor) -> torch.nn.Module:
        """The uniform subnet at ``width`` with BN statistics re-estimated on ``proxy``."""
        run = self.run
        model = space.subnet(uniform_genotype(space, width))
        return recalibrate_bn(model, proxy, batch_size=run.cfg.retrain.batch_size,
                              device=run.device)

    def _score(self, space: Any, width: float, proxy: torch.Tensor,
               test: tuple[torch.Tensor, torch.Tensor]) -> dict[str, float]:
        return evaluate(self._subnet(space, width, proxy), test,
                        batch_size=self.run.cfg.runtime.eval_batch_size, device=self.run.device)

    def _final(self, space: Any, tier: dict[str, Any], proxy: torch.Tensor
               ) -> tuple[torch.nn.Module, dict[str, Any]]:
        run = self.run
        genotype = uniform_genotype(space, tier["width"])
        model = self._subnet(space, tier["width"], proxy)
        result = evaluate(model, run._split("test"), batch_size=run.cfg.runtime.eval_batch_size,
                          device=run.device)
        params, flops = measured_cost(model, run.data.input_shape)
        limits = (tier["limit_params"], tier["limit_flops"])
        return model.cpu(), {
            "tier": tier["name"], "width": tier["width"], "genotype": genotype,
            "test_acc": result["eval_acc"], "test_loss": result["eval_loss"],
            "params": params, "flops": flops, "within_budget": within((params, flops), limits),
            "budget": {"limit_params": limits[0], "limit_flops": limits[1]}}
