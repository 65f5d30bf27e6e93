"""Shamir secret sharing over the prime field GF(2^521 − 1) (Shamir, 1979).

Used by secure aggregation (:mod:`fednas.privacy.secagg`) to share each client's self-mask seed and
pairwise-mask key among the others: any ``threshold`` shares rebuild a secret, fewer reveal
nothing about it. Pass ``rng`` for deterministic shares (tests, seeded runs); ``rng=None``
draws the polynomial from the OS.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import numpy as np

PRIME = 2**521 - 1  # Mersenne prime > 2^256: the Shamir field holds 32-byte secrets
FIELD_BYTES = 66
Share = tuple[int, int]  # (x, y) with x = holder id + 1


def random_field(rng: np.random.Generator | None) -> int:
    raw = secrets.token_bytes(FIELD_BYTES + 8) if rng is None else rng.bytes(FIELD_BYTES + 8)
    return int.from_bytes(raw, "big") % PRIME  # 64 extra bits: bias < 2^-64


def shamir_split(secret: int, holders: Sequence[int], threshold: int,
                 rng: np.random.Generator | None = None) -> dict[int, Share]:
    """Shares of ``secret`` for each holder id: any ``threshold`` of them rebuild it.

    A random polynomial f of degree t − 1 with f(0) = secret; holder h gets (h + 1, f(h + 1)).
    Fewer than t shares are consistent with every secret (perfect secrecy).
    """
    if not 0 <= secret < PRIME:
        raise ValueError("secret must be in [0, PRIME)")
    if not 1 <= threshold <= len(holders):
        raise ValueError(f"threshold must be in [1, {len(holders)}] (got {threshold})")
    coeffs = [secret] + [random_field(rng) for _ in range(threshold - 1)]
    shares = {}
    for h in holders:
        x, y = h + 1, 0
        for a in reversed(coeffs):
            y = (y * x + a) % PRIME
        shares[h] = (x, y)
    return shares


def shamir_combine(shares: Sequence[Share]) -> int:
    """f(0) by Lagrange interpolation: the secret if ``shares`` holds ≥ t distinct points."""
    xs = [x for x, _ in shares]
    if len(set(xs)) != len(xs):
        raise ValueError("duplicate share points")
    secret = 0
    for i, (xi, yi) in enumerate(shares):
        num = den = 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * -xj % PRIME
                den = den * (xi - xj) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    return secret
