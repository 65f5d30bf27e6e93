"""Device tiers in a federated run (issue 31): who is which device, what each trains, and
the ``tiers`` phase that gives every tier its own model.

* **Assignment** (:attr:`Tiers.of`, when the runner is built): a seeded draw of the partition
  ids over ``[devices]``'s tiers (:func:`fednas.federated.tiers.assign_tiers`), recorded in
  ``partitions.json`` with each tier's budget and width. The draw depends only on the config,
  so a resumed run has the same tiers (its config fingerprint is verified).
* **Search**: every client's shard is drawn within its tier's width choices
  (:meth:`Tiers.allowed`); the masked mean averages each channel over the clients that
  trained it.
* **The ``tiers`` phase**: for each tier, the model derived from the aggregated supernet
  under the tier's budget by ``compression.selection`` (α, DARTS-PT or DAP), distilled from
  ``compression.teacher`` on the server's proxy split, then fine-tuned by FedAvg for
  ``compression.fine-tune-rounds`` on the clients of ``devices.fine-tune``: ``"able"``
  (default: every client whose device can run it, i.e. its own tier and the larger ones — a
  deployer would not leave a capable device idle, and the smaller tiers' models get more
  data) or ``"own"`` (only the tier's clients). ``summary.json`` gets ``tier_<name>`` with
  params, FLOPs, ``within_budget`` (measured on the built model) and test accuracy on the
  whole test split. Each tier's rounds are their own resumable loop (``tiers:<name>``).
* **Straggler clock** (:meth:`Tiers.sim_times`): every client's simulated local time in a
  phase's rounds (:mod:`fednas.federated.stragglers`); the strategy drops those past
  ``devices.deadline-s`` and logs ``sim_round_s``/``sim_time_s``/``clients_late`` per round.
  Each model's summary entry gets ``sim_time_s`` (the simulated seconds of all the rounds
  that trained it) and ``rounds_total`` (search + fine-tune rounds: the baselines of
  :mod:`simulations.hetero_phases` get as many).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from fednas.compression.student import derive_student, distill_student, measured_cost, within
from fednas.federated.shards import Masks
from fednas.federated.stragglers import local_time
from fednas.federated.tiers import (
    assign_tiers,
    tier_candidates,
    tier_limits,
    uniform_genotype,
)
from fednas.models.flops import count_flops
from fednas.spaces.base import SearchSpace
from fednas.training.train import steps_per_epoch


class Tiers:
    """The device tiers of a federated runner ``run`` (see the module docstring)."""

    def __init__(self, run: Any) -> None:
        self.run = run
        d = run.cfg.devices
        #: the tier of every partition id (None without tiers): a seeded draw of the config
        self.of: list[int] | None = (assign_tiers(run.cfg.partition.num_clients, d.fractions,
                                                  run.cfg.seed + d.seed) if d.tiers else None)
        self._plan: list[dict[str, Any]] | None = None
        self._masks: list[Masks] = []  # per tier, what it may train (filled by plan())

    @property
    def cfg(self) -> Any:
        return self.run.cfg

    def reference(self) -> tuple[int, int]:
        """The ``(params, FLOPs)`` a fractional tier budget refers to."""
        if self.cfg.devices.reference == "baseline":
            return measured_cost(self.run.fixed_model({"kind": "baseline"}),
                                 self.run.data.input_shape)
        space = self.run.make_space()
        if space.space_name == "width":
            return space.cost(space.max_genotype())
        from fednas.compression.budget import largest_cost

        return largest_cost(space)

    def plan(self) -> list[dict[str, Any]]:
        """Per tier: name, clients, absolute limits and the widest width it may train.

        Raises
        ------
        ConfigError
            If a tier's budget is below the smallest subnet of the space.
        """
        if self._plan is None:
            d, space = self.cfg.devices, self.run.make_space()
            reference = self.reference()
            self._plan = []
            for t, name in enumerate(d.names):
                limits = tier_limits(d.budget(t), reference)
                masks, what = tier_candidates(space, limits, name)
                self._masks.append(masks)
                self._plan.append({
                    "name": name, "clients": [p for p, k in enumerate(self.of or []) if k == t],
                    "limit_params": limits[0], "limit_flops": limits[1], **what,
                    "speed": d.speed_of(t)})
        return self._plan

    def record(self, partitions: dict[str, Any]) -> dict[str, Any]:
        """``partitions.json`` with the tiers added (unchanged without tiers)."""
        if self.of is None:
            return partitions
        for client in partitions["clients"]:
            client["tier"] = self.cfg.devices.names[self.of[client["client"]]]
        return {**partitions, "tiers": self.plan()}

    def allowed(self, space: SearchSpace) -> dict[int, Masks]:
        """Per partition id, the candidates its device may train (empty without tiers)."""
        if self.of is None:
            return {}
        self.plan()
        return {pid: self._masks[t] for pid, t in enumerate(self.of)}

    def can_run(self, u: int, t: int) -> bool:
        """Whether a device of tier ``u`` can run tier ``t``'s model (every limit of ``u``
        at least ``t``'s; no limit counts as infinite)."""
        plan = self.plan()

        def at_least(a: int | None, b: int | None) -> bool:
            return a is None or (b is not None and a >= b)

        return all(at_least(plan[u][k], plan[t][k]) for k in ("limit_params", "limit_flops"))

    def clients(self, t: int) -> dict[int, int]:
        """Node id -> partition id of the clients that fine-tune tier ``t``'s model."""
        able = self.cfg.devices.fine_tune == "able"
        return {node: pid for node, pid in self.run.node_partitions.items()
                if (self.can_run(self.of[pid], t) if able else self.of[pid] == t)}

    # -- the straggler clock ---------------------------------------------------------------
    def sim_times(self, flops: int | dict[int, int], passes: float, capped: bool
                  ) -> dict[int, float]:
        """Per partition id, its simulated local seconds in one round (empty without tiers).

        ``flops``: FLOPs per sample of the model each client trains (one for all, or per
        partition id); ``passes``: forward + backward passes per sample; ``capped``: the
        search route (``search.batch-size``, ``federation.local-steps``) rather than
        fixed-model training (``retrain.batch-size``, full local epochs).
        """
        if self.of is None:
            return {}
        cfg = self.cfg
        f, d = cfg.federation, cfg.devices
        batch = cfg.search.batch_size if capped else cfg.retrain.batch_size
        reference = self.reference()[1]
        out = {}
        for pid, part in enumerate(self.run.parts):
            n = len(part) - int(round(cfg.partition.client_val_fraction * len(part)))
            steps = steps_per_epoch(n, batch, f.local_steps if capped else 0)
            samples = min(steps * batch, n) * f.local_epochs
            if isinstance(flops, dict) and pid not in flops:
                continue  # not a client of this phase
            cost = flops[pid] if isinstance(flops, dict) else flops
            out[pid] = local_time(samples, passes, cost, reference, d.sample_s,
                                  d.speed_of(self.of[pid]))
        return out

    def width_flops(self, widths: dict[int, float]) -> dict[int, int]:
        """FLOPs per sample of the uniform subnet each partition id trains (its width)."""
        space = self.run.make_space()
        cost = {w: space.cost(uniform_genotype(space, w))[1] for w in set(widths.values())}
        return {pid: cost[w] for pid, w in widths.items()}

    def search_times(self) -> dict[int, float]:
        """The search's clock: each client trains up to its tier's width with the sandwich
        rule's passes (largest, smallest and the random widths, counted at the largest) or
        DARTS' weight pass, plus the α step's pass on a val batch."""
        if self.of is None:
            return {}
        s = self.cfg.search
        passes = (2 + s.sandwich_samples if s.sandwich else 1) + 1
        if self.cfg.space.name != "width":  # the supernet restricted to the tier's ops
            flops = [self.shard_flops(t) for t in range(len(self.plan()))]
            return self.sim_times({pid: flops[t] for pid, t in enumerate(self.of)}, passes,
                                  capped=True)
        widths = {pid: self.plan()[t]["width"] for pid, t in enumerate(self.of)}
        return self.sim_times(self.width_flops(widths), passes, capped=True)

    def shard_flops(self, t: int) -> int:
        """FLOPs per sample of the supernet holding only tier ``t``'s candidates."""
        space = self.run.make_space()
        space.set_shard(self._masks[t])
        try:
            return count_flops(space, self.run.data.input_shape)
        finally:
            space.set_shard(None)

    def sim_seconds(self, phases: tuple[str, ...]) -> float:
        """Simulated seconds of every logged round of ``phases``."""
        return float(sum(m.get("sim_round_s", 0.0) for m in self.run.rundir.metrics
                         if m["phase"] in phases))

    def equal_rounds(self) -> int:
        """Rounds that train a tier's model in fednas: search + fine-tune rounds (the budget
        every baseline gets)."""
        f = self.cfg.federation
        return f.rounds + (self.cfg.compression.fine_tune_rounds or f.subnet_rounds)

    # -- the tiers phase -------------------------------------------------------------------
    def run_phase(self) -> None:
        """Derive, distil and fine-tune one model per tier (``run.models["tier_<name>"]``)."""
        for t, tier in enumerate(self.plan()):
            key = f"tier_{tier['name']}"
            if key not in self.run.models:  # a resumed run skips the finished tiers
                self.run.models[key] = self._train_tier(t, tier)

    def _derive(self, tier: dict[str, Any]) -> tuple[dict[str, Any], torch.nn.Module,
                                                      dict[str, Any]]:
        """The tier's spec, its initial model (the supernet's weights) and how it was chosen."""
        run, c = self.run, self.cfg.compression
        limits = (tier["limit_params"], tier["limit_flops"])
        comp = run.compression
        if c.selection == "dap":
            from fednas.compression.dap_student import dap_student

            init, record = dap_student(run.trained_supernet(), limits, c, comp.proxy(),
                                       self.cfg.seed, run.device,
                                       self.cfg.runtime.eval_batch_size)
            record.pop("keep")
            return {"kind": "pruned-resnet", "mids": record["mids"]}, init, record
        supernet = run.trained_supernet()
        genotype, record = derive_student(supernet, limits, c, comp.proxy(), run.device,
                                          self.cfg.runtime.eval_batch_size)
        record.pop("perturbation_scores", None)
        return {"kind": "subnet", "genotype": genotype}, supernet.subnet(genotype), record

    def _train_tier(self, t: int, tier: dict[str, Any]) -> dict[str, Any]:
        run, c = self.run, self.cfg.compression
        phase = f"tiers:{tier['name']}"
        checkpoint = run.state.checkpoint
        resuming = checkpoint is not None and checkpoint["phase"] == phase
        t0 = time.perf_counter()
        spec, init, derivation = self._derive(tier)
        entry: dict[str, Any] = {}
        if resuming:
            init = None  # the checkpoint holds the tier's weights
        else:
            torch.manual_seed(self.cfg.seed + 4 + t)
            if not c.inherit_weights:
                init = run.fixed_model(spec)
            init.to(run.device)
            if c.teacher != "none":
                teacher, entry["teacher"] = run.compression.teacher()
                distill_student(init, teacher, run.compression.proxy(), c, self.cfg.retrain,
                                self.cfg.seed + t, run.device)
                entry["after_distillation_acc"] = run.compression.test_metrics(init)["test_acc"]
        clients = self.clients(t)
        result = run.train_fixed(phase, spec, init=init, rounds=c.fine_tune_rounds,
                                 clients=clients, model_name=f"tier_{tier['name']}")
        limits = (tier["limit_params"], tier["limit_flops"])
        arch = ({"genotype": spec["genotype"]} if spec["kind"] == "subnet"
                else {"mids": spec["mids"]})
        return {**result, **arch, **entry, "tier": tier["name"], "derivation": derivation,
                "budget": {"limit_params": limits[0], "limit_flops": limits[1]},
                "within_budget": within((result["params"], result["flops"]), limits),
                "fine_tune_clients": sorted(clients.values()),
                "rounds_total": self.equal_rounds(),
                "sim_time_s": self.sim_seconds(("search", phase)),
                "wall_s": time.perf_counter() - t0}
