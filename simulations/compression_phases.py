"""The compression phases of a federated run: ``compress``, ``same-size`` and ``pruned``.

* ``compress``: the server derives the student under ``[compression]``'s budget from the
  aggregated supernet (by α, DARTS-PT, or DAP's channel gates: :mod:`fednas.compression.
  dap_student`), distils the teacher into it on its proxy split
  (the dataset's val split, which no client holds), then the clients fine-tune it by FedAvg
  (optionally with FedDF's ensemble distillation after every round).
* ``same-size``: the same architecture trained by FedAvg from scratch, same round count.
* ``pruned``: the hand-designed baseline CNN pruned uniformly (L1 filter norms) to the
  largest width within budget — from the trained baseline when the run has it — then
  fine-tuned by FedAvg for the same round count.

Used by :class:`simulations.federated.FederatedPipeline` as its ``compression``; the phases
are :mod:`simulations.phases.compression`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import torch

from fednas.compression.student import (
    budget_limits,
    derive_student,
    distill_student,
    measured_cost,
    prune_cnn,
    pruned_width,
    within,
)
from fednas.errors import ConfigError
from fednas.spaces.base import Genotype, load_genotype, save_genotype
from fednas.training.train import evaluate, recalibrate_bn

STUDENT_FILE = "student_genotype.json"
STUDENT_DAP_FILE = "student_dap.json"  # DAP's student: block widths and kept channels
RECORD_FILE = "compression.json"


class Compression:
    """The work of ``compress`` / ``same-size`` / ``pruned`` on a federated runner ``run``
    (see the module docstring): budget checks, the student, the teacher, CASD between search
    rounds, and each phase's training through ``run.train_fixed``."""

    def __init__(self, run: Any) -> None:
        self.run = run
        self._checked = False
        self._dap_student: torch.nn.Module | None = None

    def check_budget(self) -> None:
        """Fail before the run starts when the budget cannot be met (the phases' ``check``;
        once per run). A budget relative to the searched subnet is checked after the search.
        """
        if self._checked:
            return
        self._checked = True
        cfg = self.run.cfg
        phases = {"compress", "same-size", "pruned"} & set(cfg.phases)
        if not phases or cfg.compression.reference != "baseline":
            return
        limits, _ = self._limits()
        if phases & {"compress", "same-size"}:
            small, what = self._smallest()
            for key, lim, low in zip(("params", "flops"), limits, small, strict=True):
                if lim is not None and lim < low:
                    raise ConfigError(
                        f"compression.{key}: the budget resolves to {lim} {key}, below the "
                        f"smallest {what} ({small[0]} params, {small[1]} FLOPs); raise the "
                        "budget or shrink the space")
        if "pruned" in phases:
            data = self.run.data
            pruned_width(cfg.baseline.width, data.input_shape, data.num_classes, limits)

    def _smallest(self) -> tuple[tuple[int, int], str]:
        """The cost of the smallest student the selection can reach, and what it is."""
        space = self.run.make_space()
        if self.run.cfg.compression.selection != "dap":
            from fednas.compression.budget import smallest_cost

            return smallest_cost(space), "model of the search space"
        from fednas.compression.dap import prunable
        from fednas.compression.dap_gates import DapGates

        gates = DapGates(prunable(space), self.run.data.input_shape,
                         group_size=self.run.cfg.compression.dap_group_size)
        return gates.smallest(), "network DAP can reach (one channel per block)"

    def casd_hook(self, space: Any, total: int) -> Callable[[dict], dict[str, Any]]:
        """CASD between search rounds (a no-op unless ``compression.casd-every``)."""
        every = self.run.cfg.compression.casd_every
        if not every:
            return lambda state: {}
        from fednas.compression.casd import casd_step

        limits, _ = self._limits()

        def hook(state: dict) -> dict[str, Any]:
            # server_eval of round r runs before r is logged (also after a resume)
            rnd = 1 + sum(m["phase"] == "search" for m in self.run.rundir.metrics)
            if rnd % every or rnd >= total:
                return {}
            cfg = self.run.cfg
            return casd_step(self.run.make_space(), state, limits, cfg.compression, cfg.retrain,
                             cfg.seed, self.proxy(), self.run.device,
                             cfg.runtime.eval_batch_size)

        return hook

    # -- shared pieces -------------------------------------------------------------------
    def proxy(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The server's proxy split (``compression.proxy-samples`` of the val split)."""
        n = self.run.cfg.compression.proxy_samples
        x, y = self.run._split("val")
        return (x[:n], y[:n]) if n else (x, y)

    def _limits(self) -> tuple[tuple[int | None, int | None], dict[str, Any]]:
        cfg = self.run.cfg
        if cfg.compression.reference == "baseline":
            ref_model = self.run.fixed_model({"kind": "baseline"})
            reference = measured_cost(ref_model, self.run.data.input_shape)
        else:
            reference = self.run.trained_supernet().cost(self.run.genotype)
        limits = budget_limits(cfg.compression, reference)
        return limits, {"reference": cfg.compression.reference,
                        "reference_params": reference[0], "reference_flops": reference[1],
                        "limit_params": limits[0], "limit_flops": limits[1]}

    def _record(self) -> dict[str, Any]:
        path = self.run.rundir.path / RECORD_FILE
        return json.loads(path.read_text()) if path.exists() else {}

    def _save_record(self, **entries: Any) -> None:
        self.run.rundir.write_json(RECORD_FILE, {**self._record(), **entries})

    def student_genotype(self) -> Genotype:
        """The architecture derived under the budget (derived once, then read from the run)."""
        path = self.run.rundir.path / STUDENT_FILE
        if path.exists():
            return load_genotype(path)
        t0 = time.perf_counter()
        limits, budget = self._limits()
        cfg = self.run.cfg
        genotype, derivation = derive_student(self.run.trained_supernet(), limits,
                                              cfg.compression, self.proxy(), self.run.device,
                                              cfg.runtime.eval_batch_size)
        save_genotype(genotype, path)
        self._save_record(budget=budget, derivation={
            **derivation, "wall_s": time.perf_counter() - t0})
        self.run.console.print(f"\\[compress] derived under budget: {derivation['params']} params "
                           f"(limit {limits[0]}), {derivation['flops']} FLOPs "
                           f"(limit {limits[1]})")
        return genotype

    def student_spec(self) -> dict[str, Any]:
        """The student's model spec: a subnet of the derived genotype, or DAP's pruned
        ResNet (``compression.selection = "dap"``)."""
        if self.run.cfg.compression.selection == "dap":
            return {"kind": "pruned-resnet", "mids": self._dap_record()["mids"]}
        return {"kind": "subnet", "genotype": self.student_genotype()}

    def _dap_record(self) -> dict[str, Any]:
        """DAP's pruning of the full-width subnet (run once, then read from the run)."""
        path = self.run.rundir.path / STUDENT_DAP_FILE
        if path.exists():
            return json.loads(path.read_text())
        from fednas.compression.dap_student import dap_student

        t0 = time.perf_counter()
        limits, budget = self._limits()
        cfg = self.run.cfg
        if cfg.compression.dap_rounds:  # gates trained by the clients (Flower rounds)
            from simulations.dap_rounds import federated_dap_student

            self._dap_student, record = federated_dap_student(self.run, limits)
        else:
            self._dap_student, record = dap_student(
                self.run.trained_supernet(), limits, cfg.compression, self.proxy(), cfg.seed,
                self.run.device, cfg.runtime.eval_batch_size)
        self.run.rundir.write_json(STUDENT_DAP_FILE, record)
        self._save_record(budget=budget, derivation={
            **{k: v for k, v in record.items() if k != "keep"},
            "wall_s": time.perf_counter() - t0})
        self.run.console.print(f"\\[compress] DAP pruned the full-width subnet to "
                               f"{record['params']} params (limit {limits[0]}), "
                               f"{record['flops']} FLOPs (limit {limits[1]})")
        return record

    def _inherited(self, spec: dict[str, Any]) -> torch.nn.Module:
        """The student with the supernet's weights (DAP: the kept channels' weights)."""
        if spec["kind"] == "subnet":
            return self.run.trained_supernet().subnet(spec["genotype"])
        if self._dap_student is None:  # resumed after DAP ran: same source, same channels
            from fednas.compression.dap_student import rebuild_student

            self._dap_student = rebuild_student(
                self.run.trained_supernet(), self._dap_record(), self.run.cfg.compression,
                self.proxy()[0], self.run.device)
        return self._dap_student

    @staticmethod
    def _arch(spec: dict[str, Any]) -> dict[str, Any]:
        """The summary's description of the student's architecture."""
        if spec["kind"] == "subnet":
            return {"genotype": spec["genotype"]}
        return {"mids": spec["mids"], "selection": "dap"}

    def test_metrics(self, model: torch.nn.Module) -> dict[str, float]:
        """``test_acc`` / ``test_loss`` of ``model`` on the whole test split."""
        result = evaluate(model, self.run._split("test"),
                          batch_size=self.run.cfg.runtime.eval_batch_size, device=self.run.device)
        return {"test_acc": result["eval_acc"], "test_loss": result["eval_loss"]}

    def teacher(self) -> tuple[torch.nn.Module, dict[str, Any]]:
        """``compression.teacher``'s model (on the run's device) and its summary entry."""
        cfg = self.run.cfg
        if cfg.compression.teacher == "searched":
            model = self.run.fixed_model({"kind": "subnet", "genotype": self.run.genotype})
            model.load_state_dict(torch.load(self.run.rundir.path / "searched.pt",
                                                 weights_only=True)["state_dict"])
            entry = {k: self.run.models["searched"][k] for k in ("test_acc", "params", "flops")}
            return model.to(self.run.device), {"kind": "searched", **entry}
        supernet = self.run.trained_supernet().to(self.run.device)
        supernet.set_shard(None)
        x, _ = self.proxy()
        recalibrate_bn(supernet, x, batch_size=cfg.compression.batch_size, device=self.run.device)
        params, flops = measured_cost(supernet, self.run.data.input_shape)
        return supernet, {"kind": "supernet", **self.test_metrics(supernet), "params": params,
                          "flops": flops}

    def _budget_entry(self, result: dict[str, Any]) -> dict[str, Any]:
        """The budget and whether the trained model (its measured cost in ``result``) meets it."""
        budget = self._record().get("budget") or self._limits()[1]
        return {"budget": budget, "within_budget": within(
            (result["params"], result["flops"]), (budget["limit_params"], budget["limit_flops"]))}

    # -- the phases ----------------------------------------------------------------------
    def compress(self) -> dict[str, Any]:
        cfg, c = self.run.cfg, self.run.cfg.compression
        spec = self.student_spec()
        checkpoint = self.run.state.checkpoint
        resuming = checkpoint is not None and checkpoint["phase"] == "compress"
        init = None
        if not resuming:
            t0 = time.perf_counter()
            torch.manual_seed(cfg.seed + 4)
            init = self._inherited(spec) if c.inherit_weights else self.run.fixed_model(spec)
            init.to(self.run.device)
            entry: dict[str, Any] = {"start": self.test_metrics(init)}
            if c.teacher != "none":
                teacher, entry["teacher"] = self.teacher()
                entry.update(distill_student(init, teacher, self.proxy(), c, cfg.retrain,
                                             cfg.seed, self.run.device))
                entry["after_distillation"] = self.test_metrics(init)
                self.run.console.print(f"\\[compress] distilled from the {c.teacher}: test acc "
                                   f"{entry['start']['test_acc']:.4f} -> "
                                   f"{entry['after_distillation']['test_acc']:.4f}")
            entry["wall_s"] = time.perf_counter() - t0
            self._save_record(distillation=entry)
        wrap = None
        if c.feddf:
            from strategies.feddf import FedDF

            def make_model() -> torch.nn.Module:
                return self.run.fixed_model(spec)

            def wrap(base):
                return FedDF(base, make_model, self.proxy()[0], steps=c.feddf_steps, lr=c.lr,
                             batch_size=c.batch_size, temperature=c.temperature,
                             device=self.run.device, seed=cfg.seed + 43)
        result = self.run.train_fixed("compress", spec, init=init,
                                      rounds=c.fine_tune_rounds, wrap=wrap)
        distillation = self._record().get("distillation", {})
        return {**result, **self._arch(spec), **self._budget_entry(result),
                "teacher": distillation.get("teacher"),
                "after_distillation_acc": distillation.get("after_distillation", {}).get(
                    "test_acc"), "feddf": c.feddf}

    def same_size(self) -> dict[str, Any]:
        spec = self.student_spec()
        result = self.run.train_fixed("same-size", spec,
                                      rounds=self.run.cfg.compression.fine_tune_rounds)
        return {**result, **self._arch(spec), **self._budget_entry(result)}

    def pruned(self) -> dict[str, Any]:
        cfg = self.run.cfg
        limits, budget = self._limits()
        data = self.run.data
        width = pruned_width(cfg.baseline.width, data.input_shape, data.num_classes, limits)
        spec = {"kind": "baseline", "width": width}
        trained = self.run.rundir.path / "baseline.pt"
        init, source = None, "scratch"
        if "baseline" in self.run.state.done and trained.exists():
            full = self.run.fixed_model({"kind": "baseline"})
            full.load_state_dict(torch.load(trained, weights_only=True)["state_dict"])
            init, source = prune_cnn(full, width), "trained baseline"
        result = self.run.train_fixed("pruned", spec, init=init,
                                      rounds=cfg.compression.fine_tune_rounds)
        return {**result, "width": width, "pruned_from": source, "budget": budget,
                "within_budget": within((result["params"], result["flops"]), limits)}
