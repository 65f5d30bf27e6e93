"""Grids of config values: ``--grid KEY=V1,V2,...`` parsing and their cartesian product.

Shared by ``fednas halving`` (candidates) and ``fednas sweep`` (grid points).
"""

from __future__ import annotations

import itertools

from fednas.errors import ConfigError


def _split_values(text: str) -> list[str]:
    """Split ``v1,v2,[a,b]`` on the commas outside brackets and quotes."""
    out, depth, quote, cur = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        cur += ch
    out.append(cur.strip())
    return out


def parse_grid(specs: list[str], *, command: str = "grid", fixed: tuple[str, ...] = (),
               required: bool = True) -> dict[str, list[str]]:
    """``["KEY=v1,v2", ...]`` -> ``{KEY: [v1, v2]}`` (values as TOML text).

    ``fixed`` keys are set by the command itself and rejected; ``required`` demands one axis.
    """
    grid: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{command} --grid {spec!r}: expected KEY=V1,V2,...")
        if key in fixed:
            raise ConfigError(f"{command} --grid {key}: {', '.join(fixed)} are set by the "
                              f"{command} run itself")
        if key in grid:
            raise ConfigError(f"{command} --grid {key}: given twice")
        vals = _split_values(values)
        if any(v == "" for v in vals):
            raise ConfigError(f"{command} --grid {spec!r}: empty value")
        grid[key] = vals
    if required and not grid:
        raise ConfigError(f"{command}: give at least one --grid KEY=V1,V2,...")
    return grid


def candidates(grid: dict[str, list[str]]) -> list[dict[str, str]]:
    """Every grid point, in the order of the keys and values given (``[{}]`` for no grid)."""
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]
