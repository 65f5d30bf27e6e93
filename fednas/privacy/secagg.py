"""Secure aggregation by double masking (Bonawitz et al., CCS 2017), simulated in-process.

The server learns the sum of the surviving clients' vectors and nothing else, even when
clients drop out, with the protocol's real cryptography (``cryptography`` package):

0. *AdvertiseKeys*: every client i has two X25519 key pairs, c_i (encrypts shares for other
   clients) and s_i (pairwise masks); the server broadcasts the public keys.
1. *ShareKeys*: i draws a self-mask seed b_i and Shamir-shares (threshold t, over the prime
   field GF(2^521 − 1)) both b_i and its private key s_i among all n clients, itself included;
   the share for j is AES-GCM-encrypted under HKDF(X25519(c_i, c_j)), so the server, which
   routes them, sees ciphertexts only.
2. *MaskedInput*: i quantises x_i to fixed point (:class:`Quantizer`) and sends
   ``y_i = q(x_i) + PRG(b_i) + Σ_{j>i} PRG(s_ij) − Σ_{j<i} PRG(s_ij)  (mod 2^k)``, with
   s_ij = HKDF(X25519(s_i, s_j)) and PRG = the ChaCha20 keystream, uniform in Z_{2^k}.
3. *Unmasking*: the server names the survivors U (y received) and the dropped D. Each
   responding client reveals its shares of b_i for i ∈ U and of s_i for i ∈ D, never both for
   one client (it refuses), so the server can undo the pairwise masks of dropped clients but
   never strip a survivor's self-mask without also having its y: y_i stays uniformly random.
   With ≥ t shares it rebuilds b_i (i ∈ U) and s_i (i ∈ D) and decodes ``Σ_U y_i − masks``.

This module holds the primitives and the client; :mod:`fednas.privacy.secagg_server` the server and
:func:`~fednas.privacy.secagg_server.secure_sum`, which runs all parties in one process.
``strategies/secagg.py`` (server) and ``simulations/secagg_client.py`` (clients) run them over
Flower messages; the secret sharing is
:mod:`fednas.privacy.shamir`. Shortcuts: there is no consistency-check round and no signatures
(honest-but-curious server). Pass ``rng`` for deterministic keys and shares (tests, seeded
runs); ``rng=None`` draws them from the OS.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from fednas.privacy.shamir import FIELD_BYTES, Share, shamir_split


class SecAggError(RuntimeError):
    """The protocol cannot proceed (too few survivors/shares, a dishonest request)."""


# -- fixed-point encoding and the mask PRG ----------------------------------------------------
@dataclass(frozen=True)
class Quantizer:
    """Fixed point in Z_{2^bits}: ``q(x) = round(clip(x, ±clip_range) · scale)`` (two's complement).

    Overflow bound: every |q| ≤ Q = round(clip_range · scale), so a sum over n clients decodes
    exactly while n·Q ≤ 2^(bits−1) − 1 (:meth:`max_clients`). Each client adds at most
    1/(2·scale) rounding error per entry (:meth:`error_bound`); values beyond ``clip_range``
    are clipped. The defaults allow 2^21 clients with 2^-33 error each.
    """

    scale: float = 2.0**32
    clip_range: float = 1024.0
    bits: int = 64

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 64 or not self.scale > 0 or not self.clip_range > 0:
            raise ValueError("need 2 <= bits <= 64, scale > 0, clip_range > 0")
        if self.max_clients() < 1:
            raise ValueError(f"clip_range·scale = {self.clip_range * self.scale:g} does not fit "
                             f"in {self.bits} bits")

    @property
    def mask(self) -> np.uint64:
        return np.uint64((1 << self.bits) - 1)

    def max_clients(self) -> int:
        return ((1 << (self.bits - 1)) - 1) // max(1, int(np.rint(self.clip_range * self.scale)))

    def error_bound(self, num_clients: int) -> float:
        return num_clients / (2.0 * self.scale)

    def encode(self, x: np.ndarray) -> np.ndarray:
        q = np.rint(np.clip(np.asarray(x, np.float64), -self.clip_range, self.clip_range)
                    * self.scale).astype(np.int64)
        return q.view(np.uint64) & self.mask

    def decode(self, v: np.ndarray) -> np.ndarray:
        shift = np.int64(64 - self.bits)
        signed = ((v & self.mask).view(np.int64) << shift) >> shift  # sign-extend bit k−1
        return signed.astype(np.float64) / self.scale


def kdf(material: bytes, info: bytes) -> bytes:
    """A 32-byte key from ``material`` (HKDF-SHA256), separated by the label ``info``."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(material)


def prg(seed: bytes, size: int, mask: np.uint64) -> np.ndarray:
    """``size`` uniform elements of Z_{2^k}: the ChaCha20 keystream under key ``seed``."""
    stream = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    return np.frombuffer(stream.update(bytes(8 * size)), dtype="<u8").astype(np.uint64) & mask


def public_bytes(key: X25519PrivateKey) -> bytes:
    """The raw 32-byte public key of ``key`` (what the server broadcasts)."""
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def pair_seed(private: X25519PrivateKey, public: bytes) -> bytes:
    """The seed of the pairwise mask s_ij: HKDF of the X25519 agreement of i and j."""
    return kdf(private.exchange(X25519PublicKey.from_public_bytes(public)), b"secagg mask")


# -- the parties ------------------------------------------------------------------------------
class SecAggClient:
    """One client's side of the protocol (see the module docstring)."""

    def __init__(self, cid: int, quantizer: Quantizer = Quantizer(),
                 rng: np.random.Generator | None = None) -> None:
        draw = secrets.token_bytes if rng is None else rng.bytes
        self.cid = cid
        self.quantizer = quantizer
        self._rng = rng
        self._c_key = X25519PrivateKey.from_private_bytes(draw(32))
        self._s_key = X25519PrivateKey.from_private_bytes(draw(32))
        self._b_seed = draw(32)
        self._roster: dict[int, tuple[bytes, bytes]] = {}
        self._held: dict[int, tuple[Share, Share]] = {}  # owner -> (b share, s share)
        self._revealed: dict[int, str] = {}  # owner -> which share went to the server
        self._threshold = 1

    @property
    def public_keys(self) -> tuple[bytes, bytes]:
        """(c_pk, s_pk), 32 raw bytes each: round 0's message."""
        return public_bytes(self._c_key), public_bytes(self._s_key)

    def _channel(self, peer: int) -> AESGCM:
        shared = self._c_key.exchange(X25519PublicKey.from_public_bytes(self._roster[peer][0]))
        return AESGCM(kdf(shared, b"secagg shares"))

    def share_keys(self, roster: Mapping[int, tuple[bytes, bytes]], threshold: int
                   ) -> dict[int, bytes]:
        """Round 1: encrypted shares of (b_i, s_i) for every other client in ``roster``."""
        self._roster = dict(roster)
        self._threshold = threshold
        holders = sorted(roster)
        s_secret = int.from_bytes(self._s_key.private_bytes_raw(), "big")
        b_shares = shamir_split(int.from_bytes(self._b_seed, "big"), holders, threshold,
                                self._rng)
        s_shares = shamir_split(s_secret, holders, threshold, self._rng)
        out = {}
        for j in holders:
            if j == self.cid:
                self._held[j] = (b_shares[j], s_shares[j])
                continue
            body = b"".join(v.to_bytes(FIELD_BYTES, "big")
                            for v in (b_shares[j][0], b_shares[j][1], s_shares[j][1]))
            out[j] = self._channel(j).encrypt(_nonce(self.cid, j), body, _nonce(self.cid, j))
        return out

    def receive_shares(self, ciphertexts: Mapping[int, bytes]) -> None:
        """End of round 1: decrypt (and authenticate) the shares other clients sent.

        Peers that sent no shares leave the roster (Bonawitz's U2): no pairwise mask with
        them, since nobody could remove it if they never come back.
        """
        self._roster = {j: pk for j, pk in self._roster.items()
                        if j == self.cid or j in ciphertexts}
        if len(self._roster) < self._threshold:
            raise SecAggError(f"{len(self._roster)} clients shared keys < threshold "
                              f"{self._threshold}")
        for sender, ct in ciphertexts.items():
            body = self._channel(sender).decrypt(_nonce(sender, self.cid), ct,
                                                 _nonce(sender, self.cid))
            x, b_y, s_y = (int.from_bytes(body[k:k + FIELD_BYTES], "big")
                           for k in range(0, 3 * FIELD_BYTES, FIELD_BYTES))
            self._held[sender] = ((x, b_y), (x, s_y))

    def mask(self, vector: np.ndarray) -> np.ndarray:
        """Round 2: ``q(x) + PRG(b_i) + Σ_{j>i} PRG(s_ij) − Σ_{j<i} PRG(s_ij)`` mod 2^k."""
        m = self.quantizer.mask
        flat = np.asarray(vector, np.float64).ravel()
        y = self.quantizer.encode(flat) + prg(kdf(self._b_seed, b"secagg self"), flat.size, m)
        for j, (_, s_pk) in sorted(self._roster.items()):
            if j != self.cid:
                p = prg(pair_seed(self._s_key, s_pk), flat.size, m)
                y = y + p if j > self.cid else y - p
        return y & m

    def reveal(self, survivors: Sequence[int], dropped: Sequence[int]
               ) -> dict[str, dict[int, Share]]:
        """Round 3: my shares of b_i for survivors and of s_i for dropped clients.

        Refuses (:class:`SecAggError`) to reveal both kinds for one client, in this call or
        across calls, and to answer when fewer than ``threshold`` clients survive.
        """
        asked = {**dict.fromkeys(survivors, "b"), **dict.fromkeys(dropped, "s")}
        if set(survivors) & set(dropped) or any(self._revealed.get(i, k) != k
                                                for i, k in asked.items()):
            raise SecAggError("the server asks for both shares of one client: refused")
        if len(survivors) < self._threshold:
            raise SecAggError(f"{len(survivors)} survivors < threshold {self._threshold}")
        self._revealed.update(asked)
        return {"b": {i: self._held[i][0] for i in survivors if i in self._held},
                "s": {i: self._held[i][1] for i in dropped if i in self._held}}


    def to_bytes(self) -> bytes:
        """This client's secrets and protocol progress, to resume it elsewhere (a Flower
        ``Context.state`` between stages): :meth:`from_bytes` inverts it."""
        def share(s: Share) -> str:
            return f"{s[0]}:{s[1]:x}"

        return json.dumps({
            "cid": self.cid, "threshold": self._threshold, "b": self._b_seed.hex(),
            "quantizer": [self.quantizer.scale, self.quantizer.clip_range, self.quantizer.bits],
            "c": self._c_key.private_bytes_raw().hex(), "s": self._s_key.private_bytes_raw().hex(),
            "roster": {str(j): [c.hex(), s.hex()] for j, (c, s) in self._roster.items()},
            "held": {str(j): [share(b), share(s)] for j, (b, s) in self._held.items()},
            "revealed": {str(j): k for j, k in self._revealed.items()}}).encode()

    @classmethod
    def from_bytes(cls, blob: bytes) -> SecAggClient:
        """The client :meth:`to_bytes` saved (fresh OS randomness for anything drawn later)."""
        def share(text: str) -> Share:
            x, y = text.split(":")
            return int(x), int(y, 16)

        d = json.loads(blob)
        self = cls.__new__(cls)
        self.cid, self._threshold, self._rng = int(d["cid"]), int(d["threshold"]), None
        self.quantizer = Quantizer(*d["quantizer"])
        self._b_seed = bytes.fromhex(d["b"])
        self._c_key = X25519PrivateKey.from_private_bytes(bytes.fromhex(d["c"]))
        self._s_key = X25519PrivateKey.from_private_bytes(bytes.fromhex(d["s"]))
        self._roster = {int(j): (bytes.fromhex(c), bytes.fromhex(s))
                        for j, (c, s) in d["roster"].items()}
        self._held = {int(j): (share(b), share(s)) for j, (b, s) in d["held"].items()}
        self._revealed = {int(j): k for j, k in d["revealed"].items()}
        return self


def _nonce(sender: int, recipient: int) -> bytes:
    return sender.to_bytes(6, "big") + recipient.to_bytes(6, "big")
