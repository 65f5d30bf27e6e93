"""The server's side of secure aggregation (:mod:`fednas.privacy.secagg`): it routes keys and
encrypted shares, sums the masked vectors, and removes the masks with the shares the clients
reveal. :func:`secure_sum` runs the whole protocol in one process (tests, offline use)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fednas.privacy.secagg import Quantizer, SecAggClient, SecAggError, kdf, pair_seed, prg
from fednas.privacy.shamir import Share, shamir_combine


@dataclass
class Transcript:
    """Everything the server saw, round by round."""

    public_keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    ciphertexts: dict[tuple[int, int], bytes] = field(default_factory=dict)  # (from, to)
    masked: dict[int, np.ndarray] = field(default_factory=dict)
    survivors: list[int] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)
    reveals: dict[int, dict[str, dict[int, Share]]] = field(default_factory=dict)


class SecAggServer:
    """The server's side: routes keys and shares, sums masked vectors, removes the masks."""

    def __init__(self, threshold: int, quantizer: Quantizer = Quantizer()) -> None:
        self.threshold = threshold
        self.quantizer = quantizer
        self.transcript = Transcript()

    def advertise(self, public_keys: Mapping[int, tuple[bytes, bytes]]
                  ) -> dict[int, tuple[bytes, bytes]]:
        """Round 0: collect and broadcast the public keys."""
        n = len(public_keys)
        if n < 2 or not 1 <= self.threshold <= n:
            raise SecAggError(f"need >= 2 clients and 1 <= threshold <= {n}")
        if n > self.quantizer.max_clients():
            raise SecAggError(f"{n} clients overflow the {self.quantizer.bits}-bit sum; "
                              "lower scale or clip_range, or raise bits")
        self.transcript.public_keys = dict(public_keys)
        return dict(public_keys)

    def route(self, outgoing: Mapping[int, Mapping[int, bytes]]) -> dict[int, dict[int, bytes]]:
        """Round 1: sender -> recipient -> ciphertext, regrouped by recipient.

        Clients that sent nothing leave the roster (U2); the survivors of U2 mask only among
        themselves (:meth:`SecAggClient.receive_shares`).
        """
        self.transcript.public_keys = {i: pk for i, pk in self.transcript.public_keys.items()
                                       if i in outgoing}
        if len(self.transcript.public_keys) < self.threshold:
            raise SecAggError(f"{len(self.transcript.public_keys)} clients shared keys < "
                              f"threshold {self.threshold}: abort")
        inbox: dict[int, dict[int, bytes]] = {i: {} for i in self.transcript.public_keys}
        for sender, cts in outgoing.items():
            for recipient, ct in cts.items():
                self.transcript.ciphertexts[(sender, recipient)] = ct
                if recipient in inbox:
                    inbox[recipient][sender] = ct
        return inbox

    def collect(self, masked: Mapping[int, np.ndarray]) -> tuple[list[int], list[int]]:
        """Round 2: the masked vectors that arrived; returns (survivors, dropped)."""
        self.transcript.masked = {i: np.array(v, copy=True) for i, v in masked.items()}
        self.transcript.survivors = sorted(masked)
        self.transcript.dropped = sorted(set(self.transcript.public_keys) - set(masked))
        if len(masked) < self.threshold:
            raise SecAggError(f"{len(masked)} survivors < threshold {self.threshold}: abort")
        return self.transcript.survivors, self.transcript.dropped

    def aggregate(self, reveals: Mapping[int, Mapping[str, Mapping[int, Share]]]) -> np.ndarray:
        """Round 3: rebuild b_i (survivors) and s_i (dropped); the float sum of the survivors."""
        t, q = self.transcript, self.quantizer
        t.reveals = {i: {k: dict(v) for k, v in r.items()} for i, r in reveals.items()}
        size = next(iter(t.masked.values())).size
        total = np.zeros(size, np.uint64)
        for i in t.survivors:
            total += t.masked[i]
            total -= prg(kdf(self._rebuild("b", i).to_bytes(32, "big"), b"secagg self"),
                          size, q.mask)
        for d in t.dropped:
            key = X25519PrivateKey.from_private_bytes(self._rebuild("s", d).to_bytes(32, "big"))
            for j in t.survivors:  # j's y holds +PRG(s_jd) if d > j, else −PRG(s_jd)
                p = prg(pair_seed(key, t.public_keys[j][1]), size, q.mask)
                total = total - p if d > j else total + p
        return q.decode(total & q.mask)

    def _rebuild(self, kind: str, owner: int) -> int:
        shares = [r[kind][owner] for r in self.transcript.reveals.values()
                  if owner in r.get(kind, {})]
        if len(shares) < self.threshold:
            raise SecAggError(f"{len(shares)} shares of client {owner}'s {kind} < threshold "
                              f"{self.threshold}")
        return shamir_combine(shares[:self.threshold])


def secure_sum(vectors: Sequence[np.ndarray], threshold: int, rng: np.random.Generator,
               dropped: Sequence[int] = (), quantizer: Quantizer = Quantizer()
               ) -> tuple[np.ndarray, Transcript]:
    """Run the whole protocol: the sum of ``vectors`` except ``dropped``, and the transcript.

    Client i holds ``vectors[i]``; the clients in ``dropped`` go silent after sharing their
    keys (their masked input never arrives). Raises :class:`SecAggError` if fewer than
    ``threshold`` clients survive.
    """
    shape = np.shape(vectors[0])
    clients = [SecAggClient(i, quantizer, rng) for i in range(len(vectors))]
    server = SecAggServer(threshold, quantizer)
    roster = server.advertise({c.cid: c.public_keys for c in clients})
    inbox = server.route({c.cid: c.share_keys(roster, threshold) for c in clients})
    for c in clients:
        c.receive_shares(inbox[c.cid])
    gone = set(dropped)
    survivors, lost = server.collect({c.cid: c.mask(vectors[c.cid])
                                      for c in clients if c.cid not in gone})
    total = server.aggregate({c.cid: c.reveal(survivors, lost)
                              for c in clients if c.cid not in gone})
    return total.reshape(shape), server.transcript
