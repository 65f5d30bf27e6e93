"""Meta-trained weights in the run dir: saved after training, reused when the settings match.

Every network the meta phase meta-trains is saved as ``meta-<what>-<k>shot-<key>.pt`` in the
run dir (``what``: a ``meta.models`` name, ``metanas-supernet`` for MetaNAS's supernet with
its meta-learned α, ``atnas-supernet`` for AT-NAS's shared weights, ``atnas-prior`` for the
MetaNAS search AT-NAS ran itself). ``<key>`` is a digest of every setting that determines the
weights (:func:`training_key`): the run's seed and space, the few-shot data and split, the
task shape, the meta-learning algorithm and its lrs and steps, the model's own keys, and (for
every model but ``conv4``, which starts from scratch) a fingerprint of the run's weights the
model starts from (``supernet.pt``, ``searched.pt``; ``baseline.pt`` for
``conv4-pretrained``), so retrained run weights are never
answered with networks meta-trained from the old ones. A
later meta phase on the same run dir (``fednas meta RUN_DIR``, an interrupted phase run again)
loads a file whose key matches instead of meta-training again, and records its name; files
of other settings are left as they are, so nothing meta-trained is lost. Scores are
recomputed from the loaded weights (the evaluation keys are not part of the key), so
evaluation settings (test tasks, adaptation steps, AT-NAS's evolution) can change cheaply.
The key does not cover the fednas/torch versions or the device.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fednas.errors import CheckpointError
from fednas.meta.setup import MetaSetup
from fednas.reporting.rundir import RunDir

# [meta] keys that only change how models are scored or listed, not their weights
EVAL_ONLY = ("models", "shots", "eval_tasks", "eval_inner_steps", "eval_split", "log_every",
             "root", "atnas", "metanas", "dap")
ATNAS_TRAINING = ("iterations", "prior", "temperature")
KINDS = ("searched", "supernet", "conv4", "conv4-pretrained", "metanas", "metanas-supernet",
         "atnas-supernet", "atnas-prior", "dap")


# [space.*] keys added after weights were first stored: left out of the key while at these
# (their default) values, so the keys of earlier settings, and their files, stay the same
LATER_SPACE_KEYS = {"cell": {"partial_channels": 1, "edge_normalisation": False}}

RUN_WEIGHTS = ("supernet.pt", "searched.pt")  # the run's files meta-models start from
PRETRAINED = {"conv4-pretrained": ("baseline.pt",)}  # kinds that start from other files


def _sha(path: Path) -> str:
    stat = path.stat()
    return _sha_of(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _sha_of(path: str, mtime_ns: int, size: int) -> str:  # cached while the file is unchanged
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()[:16]


def run_weights(run_dir: Path | None, names: tuple[str, ...] = RUN_WEIGHTS) -> dict[str, str]:
    """Fingerprints (SHA-256, 16 hex digits) of the run's weight files ``names`` that exist."""
    if run_dir is None:
        return {}
    return {name: _sha(Path(run_dir) / name) for name in names
            if (Path(run_dir) / name).is_file()}


def _space_key(setup: MetaSetup) -> dict[str, Any]:
    """``[space]`` as a dict, without the :data:`LATER_SPACE_KEYS` at their defaults."""
    space = dataclasses.asdict(setup.space)
    for section, defaults in LATER_SPACE_KEYS.items():
        sub = space.get(section, {})
        for key, default in defaults.items():
            if key in sub and sub[key] == default:
                del sub[key]
    return space


def atnas_init(setup: MetaSetup, run_dir: Path | None) -> str:
    """What AT-NAS's shared weights start from: ``scratch`` (``meta.init = "scratch"``),
    ``search`` or ``retrained`` (``meta.atnas.init``; ``auto``: retrained when ``run_dir``
    has ``searched.pt`` retrained at the search's width and depth, else search)."""
    m, r, c = setup.meta, setup.retrain, setup.space.cell
    if m.init == "scratch" or m.atnas.init != "auto":
        return "scratch" if m.init == "scratch" else m.atnas.init
    same_shape = r.channels in (0, c.channels) and r.layers in (0, c.layers)
    found = run_dir is not None and (Path(run_dir) / "searched.pt").is_file()
    return "retrained" if same_shape and found else "search"


def training_key(setup: MetaSetup, what: str, shots: int, run_dir: Path | None = None
                 ) -> dict[str, Any]:
    """The settings that determine the meta-trained weights of ``what`` at ``shots``.

    ``run_dir``: the run whose weights the model starts from (fingerprinted into the key
    unless the model starts from scratch: ``conv4``, or ``meta.init = "scratch"``;
    ``conv4-pretrained`` fingerprints ``baseline.pt``).
    """
    if what not in KINDS:
        raise ValueError(f"training_key: unknown {what!r}; one of {KINDS}")
    m = setup.meta
    key: dict[str, Any] = {
        "what": what, "shots": shots, "seed": setup.seed,
        "meta": {k: v for k, v in dataclasses.asdict(m).items() if k not in EVAL_ONLY},
        "space": _space_key(setup),
        "retrain": {"channels": setup.retrain.channels, "layers": setup.retrain.layers}}
    if what == "dap":  # the pruned source: its weights and DAP's settings
        key["dap"] = dataclasses.asdict(m.dap)
        key["run_weights"] = run_weights(run_dir, PRETRAINED.get(m.dap.source, RUN_WEIGHTS))
        key["baseline"] = dataclasses.asdict(setup.baseline)
    elif what in PRETRAINED:  # always from the run (meta.init is about the search's weights)
        key["run_weights"] = run_weights(run_dir, PRETRAINED[what])
        key["baseline"] = dataclasses.asdict(setup.baseline)
    elif what != "conv4" and m.init == "searched":
        key["run_weights"] = run_weights(run_dir)
    if what in ("metanas", "metanas-supernet", "atnas-prior") or (
            what == "atnas-supernet" and m.atnas.prior == "metanas"):
        key["metanas"] = dataclasses.asdict(m.metanas)
    if what == "atnas-supernet":
        key["atnas"] = {k: getattr(m.atnas, k) for k in ATNAS_TRAINING}
    if what in ("atnas-supernet", "atnas-prior") and atnas_init(setup, run_dir) == "retrained":
        key["init"] = "retrained"  # absent for the search's weights: earlier files still match
    return json.loads(json.dumps(key, sort_keys=True))  # tuples → lists, as saved


def digest(key: dict[str, Any]) -> str:
    """Eight hex digits naming ``key`` (its canonical JSON's SHA-256)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:8]


def file_name(key: dict[str, Any]) -> str:
    """``meta-<what>-<k>shot-<digest>.pt``."""
    return f"meta-{key['what']}-{key['shots']}shot-{digest(key)}.pt"


@dataclass
class Saved:
    """Weights found in the run dir for a key."""

    state: dict[str, torch.Tensor]
    seconds: float  # what meta-training them took
    extra: dict[str, Any]  # what the phase recorded with them
    name: str  # the file's name


def load(run_dir: Path, key: dict[str, Any]) -> Saved | None:
    """The weights saved for ``key`` in ``run_dir``, or None.

    A file of that name whose recorded key differs (a digest collision or a hand-edited file)
    raises :class:`CheckpointError` rather than being used or overwritten.
    """
    path = Path(run_dir) / file_name(key)
    if not path.is_file():
        return None
    blob = torch.load(path, map_location="cpu", weights_only=True)
    meta = blob.get("meta", {})
    if meta.get("training") != key:
        raise CheckpointError(f"{path}: its recorded meta-training settings differ from this "
                              "run's although the digest matches; move the file away")
    return Saved(blob["state_dict"], float(meta.get("seconds", 0.0)), meta.get("extra", {}),
                 path.name)


def save(run: RunDir, key: dict[str, Any], module: nn.Module, seconds: float,
         **extra: Any) -> str:
    """Save ``module``'s weights for ``key``; return the file's name."""
    name = file_name(key)
    run.save_model(name[:-3], module, training=key, seconds=seconds, extra=extra)
    return name


def load_into(module: nn.Module, saved: Saved) -> None:
    """Load ``saved`` into ``module``, naming the file when the architectures differ."""
    try:
        module.load_state_dict(saved.state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{saved.name}: does not fit the model it was saved for "
                              f"({first})") from None
