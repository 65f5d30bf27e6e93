"""Pre-flight checks: what can be known wrong before a run dir, a data load or Ray exists.

Each check raises a one-line :class:`~fednas.errors.ConfigError` (a config key, an option or
a path is wrong) or :class:`~fednas.errors.DataError` (the dataset cannot train a classifier)
naming the culprit; the CLI prints it and exits 2. In order of use:

* :func:`read_scenario`: a scenario path that is missing, a directory, unreadable or not
  UTF-8 text;
* :func:`check_config`: rules of :class:`~fednas.config.run_config.RunConfig` that involve
  the search space (candidate ops, ``federation.shard-size``, ``federation.warmup-rounds``);
* :func:`check_output_dir` / :func:`check_output_file` / :func:`check_run_paths`: outputs
  below a regular file or in a place that cannot be written, data dirs below a file;
* :func:`check_count`: CLI integers (``--parallel``, ``--budget``, ...);
* :func:`check_dataset` and :func:`check_models` (after the
  data is loaded, before the run dir): one class only, images too small for the space.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from fednas.errors import ConfigError, DataError


def read_scenario(path: Path) -> str:
    """The text of scenario file ``path``.

    Raises
    ------
    ConfigError
        If ``path`` is missing, a directory, unreadable or not UTF-8 text.
    """
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"scenario file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"scenario {path} is a directory, not a TOML file") from None
    except PermissionError:
        raise ConfigError(f"scenario {path} cannot be read (permission denied)") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"scenario {path} is not UTF-8 text (byte {exc.start}: "
                          f"{exc.object[exc.start:exc.start + 1]!r}); a scenario is a "
                          "TOML file") from None
    except OSError as exc:
        raise ConfigError(f"scenario {path} cannot be read: {exc.strerror or exc}") from None


def shard_limit(space: Any) -> tuple[int, str] | None:
    """``(candidates per edge/layer, the key that sets them)`` of a built-in space's config
    (``space`` is the ``[space]`` section), or None for a space registered by user code."""
    if space.name == "cell":
        return len(space.cell.ops), "space.cell.ops"
    if space.name == "width":
        return len(space.width.width_choices), "space.width.width-choices"
    return None


def check_shard_size(shard_size: int, candidates: int, where: str) -> None:
    """Raise if ``federation.shard-size`` exceeds the ``candidates`` per edge/layer."""
    if shard_size > candidates:
        raise ConfigError(f"federation.shard-size: {shard_size} exceeds the {candidates} "
                          f"candidates per edge/layer ({where}); allowed: 0 (all) or "
                          f"1..{candidates}")


def check_config(cfg: Any) -> None:
    """The space-related rules of a :class:`~fednas.config.run_config.RunConfig` ``cfg``."""
    ops = cfg.space.cell.ops
    if cfg.space.name == "cell":
        if not ops or len(set(ops)) != len(ops):
            raise ConfigError(f"space.cell.ops: a non-empty list of distinct ops (got "
                              f"{list(ops)})")
        if set(ops) == {"none"}:
            raise ConfigError("space.cell.ops: needs at least one op other than 'none'")
    limit = shard_limit(cfg.space)
    if cfg.mode == "federated" and limit is not None:
        check_shard_size(cfg.federation.shard_size, *limit)
    f = cfg.federation
    if cfg.mode == "federated" and "search" in cfg.phases and f.warmup_rounds >= f.rounds:
        raise ConfigError(f"federation.warmup-rounds: {f.warmup_rounds} warm-up rounds leave "
                          f"none of the federation.rounds = {f.rounds} search rounds to learn "
                          f"α; allowed: 0..{f.rounds - 1}")


def _first_existing(path: Path) -> tuple[Path, os.stat_result | None]:
    """The deepest existing ancestor of ``path`` (itself included) and its stat."""
    for candidate in (path, *path.parents):
        try:
            return candidate, candidate.stat()
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:  # permission denied on the way: report that ancestor
            if exc.errno == errno.EACCES:
                return candidate, None
            continue
    return Path(path.anchor or "."), None


def _no_dir(path: Path, what: str) -> ConfigError | None:
    """An error if ``path`` is, or lies below, something other than a directory."""
    if os.path.lexists(path) and not path.exists():
        return ConfigError(f"{what}: {path} is a broken symbolic link")
    found, stat = _first_existing(path)
    if stat is None:
        return ConfigError(f"{what}: {path} cannot be reached: {found} is not accessible "
                           "(permission denied)")
    if not os.path.isdir(found):
        where = "is" if found == path else f"lies below {found}, which is"
        return ConfigError(f"{what}: {path} {where} a regular file, not a directory")
    return None


def check_output_dir(path: str | Path, what: str) -> Path:
    """Check that directory ``path`` exists or can be created, and can be written.

    ``what`` names the option or key in the message (e.g. ``"runtime.out-dir"``).

    Raises
    ------
    ConfigError
        If ``path`` or an ancestor is a regular file, or the deepest existing ancestor
        cannot be written.
    """
    path = Path(path).expanduser()
    error = _no_dir(path, what)
    if error is not None:
        raise error
    found, _ = _first_existing(path)
    if not os.access(found, os.W_OK | os.X_OK):
        verb = "cannot be written" if found == path else f"cannot be created in {found}"
        raise ConfigError(f"{what}: {path} {verb} (permission denied)")
    return path


def check_output_file(path: str | Path, what: str) -> Path:
    """Check that file ``path`` can be written: not a directory, in a writable directory."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"{what}: {path} is a directory; give a file name")
    try:
        check_output_dir(path.parent, what)
    except ConfigError as exc:
        reason = str(exc).removeprefix(f"{what}: ")
        raise ConfigError(f"{what}: cannot write {path}: {reason}") from None
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{what}: {path} cannot be overwritten (permission denied)")
    return path


def check_run_paths(cfg: Any) -> None:
    """The paths a new run of ``cfg`` writes or reads: ``runtime.out-dir`` must be a
    writable directory; ``data.root`` and ``meta.root`` must not be or lie below a file."""
    check_output_dir(cfg.runtime.out_dir, "runtime.out-dir")
    for key, value in (("data.root", cfg.data.root), ("meta.root", cfg.meta.root)):
        if value:
            error = _no_dir(Path(value).expanduser(), key)
            if error is not None:
                raise error


def check_count(value: int, what: str, minimum: int) -> int:
    """Raise a one-line ConfigError if CLI integer ``value`` (option ``what``) is below
    ``minimum``; else return it."""
    if value < minimum:
        raise ConfigError(f"{what}: must be >= {minimum} (got {value})")
    return value


def check_dataset(cfg: Any, data: Any) -> None:
    """Raise DataError if ``data`` (a loaded :class:`~fednas.data.datasets.Dataset`) cannot
    train a classifier: fewer than two classes in its training split."""
    import torch

    classes = torch.unique(data.train_y).tolist()
    if len(classes) < 2:
        names = [data.class_names[c] if c < len(data.class_names) else str(c)
                 for c in classes]
        raise DataError(f"data.dataset {cfg.data.dataset!r}: the training split holds "
                        f"{len(classes)} class{'' if len(classes) == 1 else 'es'} {names}; "
                        "a classifier needs at least 2")


def _problem(model: Any, shape: tuple[int, ...], strict: bool) -> str | None:
    """Feed ``model`` one zero image of ``shape`` (eval mode, no grad); what goes wrong:
    the error a layer raises or, if ``strict``, the first strided conv/pool whose input maps
    are smaller than its stride (its output would be padding only). None if nothing does."""
    import torch
    from torch import nn

    found: list[str] = []

    def hook(module: nn.Module, inputs: tuple, _: Any) -> None:
        stride = module.stride if isinstance(module.stride, tuple) else (module.stride,) * 2
        x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        if x is not None and x.dim() == 4 and any(
                s > 1 and n < s for s, n in zip(stride, x.shape[-2:], strict=True)):
            found.append(f"a {type(module).__name__} of stride {max(stride)} gets "
                         f"{x.shape[-2]}×{x.shape[-1]} maps")

    kinds = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
    hooks = [m.register_forward_hook(hook) for m in model.modules()
             if strict and isinstance(m, kinds)]
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *shape))
    except RuntimeError as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    finally:
        for h in hooks:
            h.remove()
    return found[0] if found else None


def _min_side(build: Any, channels: int, strict: bool, limit: int = 4096) -> int | None:
    """The smallest side ``s`` of square ``channels×s×s`` images that ``build(shape)``'s
    model takes without a :func:`_problem` (None if not even ``limit``)."""
    def ok(side: int) -> bool:
        shape = (channels, side, side)
        return _problem(build(shape), shape, strict) is None

    hi = 1
    while not ok(hi):
        if hi >= limit:
            return None
        hi *= 2
    lo = hi // 2  # fails (or 0); hi works
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def check_models(cfg: Any, data: Any) -> None:
    """Build the run's search space (and hand-designed baseline) for ``data``'s images, once,
    on the CPU and without moving the global random state.

    A space that rejects its options (``space.*``) fails here, before the run dir exists; a
    user space's candidates bound ``federation.shard-size``; images too small for the
    space's stem and reductions (a strided layer would see maps smaller than its stride) or
    for the baseline raise DataError with the smallest side that works, computed from the
    model itself.
    """
    import random
    import warnings

    import numpy as np
    import torch

    from fednas.models.baselines import build_model
    from fednas.spaces.registry import build_space

    shape, classes = tuple(data.input_shape), data.num_classes
    builds = []
    if "search" in cfg.phases:
        def space(s: tuple[int, ...]) -> Any:
            return build_space(cfg.space.name, input_shape=s, num_classes=classes,
                               **cfg.space.options())
        builds.append((space, True, f"space.name = {cfg.space.name!r}"))
    if {"baseline", "pruned"} & set(cfg.phases):
        def baseline(s: tuple[int, ...]) -> Any:
            return build_model(cfg.baseline.model, input_shape=s, num_classes=classes,
                               width=cfg.baseline.width)
        builds.append((baseline, False, f"baseline.model = {cfg.baseline.model!r}"))
    states = random.getstate(), np.random.get_state(), torch.get_num_threads()
    torch.set_num_threads(1)  # one tiny image: threads only add overhead (and contention)
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. zero-element layers of too small images
            for build, strict, what in builds:
                model = build(shape)
                if strict and cfg.mode == "federated" and shard_limit(cfg.space) is None:
                    check_shard_size(cfg.federation.shard_size, max(
                        a.shape[-1] for a in model.arch_parameters()), what)
                problem = _problem(model, shape, strict)
                if problem is not None:
                    side = _min_side(build, shape[0], strict)
                    need = f"at least {side}×{side}" if side else "larger images"
                    raise DataError(f"data.dataset {cfg.data.dataset!r}: its {shape[1]}×"
                                    f"{shape[2]} images are too small for {what} ({problem}); "
                                    f"it needs {need}")
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_num_threads(states[2])
