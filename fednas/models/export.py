"""Standalone model files: ``fednas export RUN_DIR`` and :func:`load_model`.

An exported file is one ``torch.save`` bundle that rebuilds its model with fednas and torch
only (no run dir, scenario or Flower): the architecture recipe (the hand CNN's width, a cell
genotype with its macro-architecture, or a width-space genotype with its space), the
weights, the input contract (shape, the per-channel normalisation the model was trained
with, class count) and the test accuracy recorded by the run. ``export(..., verify=True)``
reloads the file and re-evaluates it on the run's test split, and refuses to write a file
whose accuracy does not reproduce.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fednas.config.preflight import check_output_file
from fednas.errors import CheckpointError, FedNASError
from fednas.version import __version__

FORMAT = "fednas-model/1"


def _recipe(cfg: Any, spec: dict[str, Any], input_shape: tuple[int, ...], num_classes: int
            ) -> dict[str, Any]:
    """How to rebuild the model of ``spec`` without the scenario (mirrors build_fixed_model)."""
    common = {"input_shape": list(input_shape), "num_classes": num_classes}
    if spec["kind"] == "baseline":
        return {"kind": cfg.baseline.model, "width": int(spec.get("width", cfg.baseline.width)),
                **common}
    if spec["kind"] == "pruned-resnet":
        w = cfg.space.width
        return {"kind": "pruned-resnet", "mids": [int(m) for m in spec["mids"]],
                "base_channels": w.base_channels, "stem_stride": w.stem_stride, **common}
    genotype = spec["genotype"]
    if genotype["space"] == "cell":
        c = cfg.space.cell
        return {"kind": "cell", "genotype": genotype, "channels": cfg.retrain.channels or
                c.channels, "layers": cfg.retrain.layers or c.layers,
                "stem_stride": c.stem_stride, "allowed_ops": list(c.ops), **common}
    return {"kind": "width", "genotype": genotype, "space": cfg.space.options(), **common}


def build(recipe: dict[str, Any]) -> nn.Module:
    """The (untrained) model of an export recipe."""
    shape, classes = tuple(recipe["input_shape"]), int(recipe["num_classes"])
    kind = recipe["kind"]
    if kind == "cell":
        from fednas.spaces.cellnet import CellNetwork

        return CellNetwork(recipe["genotype"], input_shape=shape, num_classes=classes,
                           channels=recipe["channels"], layers=recipe["layers"],
                           stem_stride=recipe["stem_stride"],
                           allowed_ops=tuple(recipe["allowed_ops"]))
    if kind == "width":
        from fednas.spaces.registry import build_space

        space = build_space("width", input_shape=shape, num_classes=classes, **recipe["space"])
        return space.subnet(recipe["genotype"])
    if kind == "pruned-resnet":
        from fednas.models.resnet import CifarResNet

        return CifarResNet(shape[0], classes, recipe["base_channels"], recipe["mids"],
                           recipe["stem_stride"])
    from fednas.models.baselines import build_model

    return build_model(kind, input_shape=shape, num_classes=classes, width=recipe["width"])


def _spec(run_dir: Path, name: str, meta: dict[str, Any], cfg: Any) -> dict[str, Any]:
    if "spec" in meta:  # federated runs
        return meta["spec"]
    if name == "baseline":
        return {"kind": "baseline", "width": meta.get("width", cfg.baseline.width)}
    if "genotype" in meta:
        return {"kind": "subnet", "genotype": meta["genotype"]}
    raise CheckpointError(f"{run_dir / (name + '.pt')}: no architecture recorded with the "
                          "weights; cannot export it")


def export(run_dir: str | Path, model: str = "distilled", out: str | Path | None = None,
           verify: bool = True) -> tuple[Path, dict[str, Any]]:
    """Write ``model`` of a finished run as a standalone file; return its path and metadata.

    Raises
    ------
    FedNASError
        If the run has no such model, or (``verify``) the reloaded model's test accuracy
        differs from the accuracy the run recorded.
    """
    from fednas.config.loading import load_config

    run_dir = Path(run_dir)
    summary_path, weights = run_dir / "summary.json", run_dir / f"{model}.pt"
    if not summary_path.is_file():
        raise FedNASError(f"export: {run_dir} is not a finished run dir (no summary.json)")
    summary = json.loads(summary_path.read_text())
    models = summary.get("models", {})
    if model not in models or not weights.is_file():
        raise FedNASError(f"export: {run_dir} has no model {model!r}; it has "
                          f"{sorted(m for m in models if (run_dir / f'{m}.pt').is_file())}")
    out = check_output_file(out if out else run_dir / f"{model}.fednas.pt", "export --out")
    cfg = load_config(run_dir / "config.toml")
    saved = torch.load(weights, map_location="cpu", weights_only=True)
    data = summary["dataset"]
    shape = tuple(data["input_shape"])
    recipe = _recipe(cfg, _spec(run_dir, model, saved.get("meta", {}), cfg), shape,
                     int(data["num_classes"]))
    entry = models[model]
    bundle = {"format": FORMAT, "recipe": recipe, "state_dict": saved["state_dict"],
              "input": {"shape": list(shape), "mean": data.get("mean"), "std": data.get("std"),
                        "dataset": data.get("name", cfg.data.dataset),
                        "class_names": data.get("class_names")},
              "metrics": {k: entry[k] for k in ("test_acc", "test_loss", "params", "flops")
                          if k in entry},
              "source": {"run_dir": str(run_dir), "model": model, "seed": summary.get("seed"),
                         "scenario": summary.get("scenario")},
              "versions": {"fednas": __version__, "torch": str(torch.__version__)}}
    tmp = out.with_suffix(".tmp")
    torch.save(bundle, tmp)
    if verify:
        bundle["metrics"]["reproduced_test_acc"] = _reproduce(tmp, cfg, entry)
        torch.save(bundle, tmp)
    tmp.replace(out)
    return out, {k: v for k, v in bundle.items() if k != "state_dict"}


def _reproduce(path: Path, cfg: Any, entry: dict[str, Any]) -> float:
    from fednas.data.run_data import run_dataset
    from fednas.meta.setup import meta_setup
    from fednas.training.train import evaluate

    reloaded = load_model(path)
    offline = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, download=False))
    data = run_dataset(offline.data, offline.seed, meta_setup(offline))
    acc = evaluate(reloaded, (data.test_x, data.test_y), batch_size=cfg.runtime.eval_batch_size,
                   device=torch.device("cpu"))["eval_acc"]
    if abs(acc - entry["test_acc"]) > 1e-6:
        path.unlink(missing_ok=True)
        raise FedNASError(f"export: the reloaded model scores {acc:.6f} on the test split, the "
                          f"run recorded {entry['test_acc']:.6f}; file not written")
    return acc


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild an exported model (eval mode) from a ``fednas export`` file.

    The bundle's metadata (input contract, recorded metrics, source run) is attached as
    ``model.fednas_info``. Inputs must be normalised with ``fednas_info["input"]["mean"]``
    and ``["std"]`` per channel, as during training.

    Raises
    ------
    CheckpointError
        If the file is missing, not a fednas export, or its weights do not fit the recipe.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"load_model: {path} does not exist")
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"load_model: {path} is not a readable fednas export "
                              f"({type(exc).__name__}: {reason})") from None
    if not isinstance(bundle, dict) or bundle.get("format") != FORMAT:
        raise CheckpointError(f"load_model: {path} is not a fednas export ({FORMAT}); make one "
                              "with `fednas export RUN_DIR`")
    model = build(bundle["recipe"])
    try:
        model.load_state_dict(bundle["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"load_model: {path}: weights do not match the recipe: "
                              f"{str(exc).splitlines()[0]}") from None
    model.fednas_info = {k: v for k, v in bundle.items() if k != "state_dict"}
    return model.to(device).eval()
