"""Secure aggregation: Shamir, fixed point, masking, dropout recovery, what the server sees."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fednas.privacy.secagg import (  # the mask primitives: to play the curious server in one test
    Quantizer,
    SecAggClient,
    SecAggError,
    pair_seed,
    prg,
    public_bytes,
)
from fednas.privacy.secagg_server import SecAggServer, secure_sum
from fednas.privacy.shamir import PRIME, shamir_combine, shamir_split


def _vectors(n: int, size: int = 500, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(scale=0.5, size=size) for _ in range(n)]


def test_shamir_threshold():
    rng = np.random.default_rng(0)
    secret = int.from_bytes(rng.bytes(32), "big")
    shares = shamir_split(secret, list(range(5)), 3, rng)
    assert [x for x, _ in shares.values()] == [1, 2, 3, 4, 5]
    for subset in itertools.combinations(shares.values(), 3):
        assert shamir_combine(list(subset)) == secret
    assert shamir_combine(list(shares.values())) == secret
    for subset in itertools.combinations(shares.values(), 2):
        assert shamir_combine(list(subset)) != secret
    # t − 1 shares are consistent with any secret: a degree-2 polynomial through (0, s') and
    # the two known shares exists and reproduces them.
    known = [shares[0], shares[1]]
    for fake in (0, 12345, PRIME - 1):
        third = (7, _eval_through([(0, fake), *known], 7))
        assert shamir_combine([*known, third]) == fake
    with pytest.raises(ValueError):
        shamir_split(secret, [0, 1], 3, rng)
    with pytest.raises(ValueError):
        shamir_combine([shares[0], shares[0]])


def _eval_through(points: list[tuple[int, int]], x: int) -> int:
    total = 0
    for i, (xi, yi) in enumerate(points):
        term = yi
        for j, (xj, _) in enumerate(points):
            if j != i:
                term = term * (x - xj) * pow(xi - xj, -1, PRIME) % PRIME
        total = (total + term) % PRIME
    return total


def test_quantizer_roundtrip_wraparound_and_bounds():
    q = Quantizer(scale=2.0**8, clip_range=4.0, bits=16)
    x = np.array([-4.0, -1.3, 0.0, 0.002, 2.5, 4.0, 100.0])
    enc = q.encode(x)
    assert enc.dtype == np.uint64 and int(enc.max()) < 2**16
    back = q.decode(enc)
    assert np.all(np.abs(back[:-1] - x[:-1]) <= 1 / (2 * q.scale))
    assert back[-1] == 4.0  # clipped to the range
    assert q.max_clients() == (2**15 - 1) // 1024
    total = sum(q.encode(np.full(3, -3.9)) for _ in range(q.max_clients())) & q.mask
    assert np.allclose(q.decode(total), -3.9 * q.max_clients(), atol=q.error_bound(31))
    with pytest.raises(ValueError):
        Quantizer(scale=2.0**20, clip_range=1.0, bits=16)
    with pytest.raises(SecAggError, match="overflow"):
        SecAggServer(2, Quantizer(scale=2.0**8, clip_range=4.0, bits=12)).advertise(
            {i: (b"", b"") for i in range(5)})


@pytest.mark.parametrize("dropped", [(), (2,), (0, 4)])
def test_secure_sum_equals_plain_sum(dropped):
    vectors = _vectors(6)
    quant = Quantizer()
    total, transcript = secure_sum(vectors, threshold=4, rng=np.random.default_rng(1),
                                   dropped=dropped, quantizer=quant)
    alive = [i for i in range(6) if i not in dropped]
    plain = sum(vectors[i] for i in alive)
    assert np.max(np.abs(total - plain)) <= quant.error_bound(len(alive)) + 1e-12
    assert transcript.survivors == alive and transcript.dropped == list(dropped)


def test_coarse_quantizer_error_bound_and_shape():
    vectors = [v.reshape(20, 25) for v in _vectors(4)]
    quant = Quantizer(scale=2.0**10, clip_range=8.0, bits=24)
    total, _ = secure_sum(vectors, 3, np.random.default_rng(2), dropped=(3,), quantizer=quant)
    assert total.shape == (20, 25)
    err = np.max(np.abs(total - (vectors[0] + vectors[1] + vectors[2])))
    assert 0 < err <= quant.error_bound(3)


def test_server_view_reveals_nothing_about_single_updates():
    vectors = _vectors(5, size=2000)
    quant = Quantizer()
    _, t = secure_sum(vectors, 3, np.random.default_rng(3), dropped=(1,), quantizer=quant)
    for i, y in t.masked.items():
        seen = quant.decode(y)  # the server's best plain reading of y_i
        assert np.median(np.abs(seen - vectors[i])) > 1.0  # uniform over ±2^31, not x_i
        assert abs(np.corrcoef(seen, vectors[i])[0, 1]) < 0.1
        assert abs(y.astype(np.float64).mean() / 2.0**63 - 1) < 0.05  # ≈ uniform in Z_2^64
    # survivors' mask keys stay secret: the server got only self-mask shares for them, only
    # key shares for the dropped client, and ciphertexts (never share bytes) in round 1
    for reveal in t.reveals.values():
        assert set(reveal["b"]) == set(t.survivors) and set(reveal["s"]) == {1}
    assert len(t.ciphertexts) == 5 * 4
    assert all(len(ct) == 3 * 66 + 16 for ct in t.ciphertexts.values())


def _setup(n: int, threshold: int, seed: int):
    rng = np.random.default_rng(seed)
    clients = [SecAggClient(i, rng=rng) for i in range(n)]
    server = SecAggServer(threshold)
    roster = server.advertise({c.cid: c.public_keys for c in clients})
    inbox = server.route({c.cid: c.share_keys(roster, threshold) for c in clients})
    for c in clients:
        c.receive_shares(inbox[c.cid])
    return clients, server


def test_a_lying_server_still_cannot_unmask_a_survivor():
    clients, server = _setup(4, 3, seed=4)
    vectors = _vectors(4)
    survivors, dropped = server.collect({c.cid: c.mask(vectors[c.cid]) for c in clients})
    assert dropped == []
    # The server received y_0 but claims client 0 dropped, so it learns 0's mask key s_0 ...
    lies = [c.reveal([1, 2, 3], [0]) for c in clients[1:]]
    s_0 = shamir_combine([r["s"][0] for r in lies])
    key = X25519PrivateKey.from_private_bytes(s_0.to_bytes(32, "big"))
    assert public_bytes(key) == server.transcript.public_keys[0][1]
    y = server.transcript.masked[0].copy()
    for j in (1, 2, 3):  # ... and strips every pairwise mask from y_0 ...
        y -= prg(pair_seed(key, server.transcript.public_keys[j][1]), y.size,
                  Quantizer().mask)
    seen = Quantizer().decode(y)
    assert np.median(np.abs(seen - vectors[0])) > 1.0  # ... but the self-mask PRG(b_0) stays
    with pytest.raises(SecAggError, match="refused"):
        clients[1].reveal(survivors, dropped)  # b_0 as well: honest clients refuse
    with pytest.raises(SecAggError, match="refused"):
        clients[2].reveal([1, 2, 3], [0, 1])  # both kinds in one request
    with pytest.raises(SecAggError, match="threshold"):
        clients[0].reveal([0, 1], [2, 3])


def test_unmasking_needs_only_threshold_responders():
    clients, server = _setup(5, 3, seed=9)
    vectors = _vectors(5)
    survivors, dropped = server.collect({c.cid: c.mask(vectors[c.cid]) for c in clients[1:]})
    assert dropped == [0]
    # client 1 sent y_1 but goes silent in the unmasking round: 3 responders suffice
    total = server.aggregate({c.cid: c.reveal(survivors, dropped) for c in clients[2:]})
    assert np.max(np.abs(total - sum(vectors[1:]))) <= Quantizer().error_bound(4)


def test_too_few_survivors_or_shares_abort():
    with pytest.raises(SecAggError, match="threshold"):
        secure_sum(_vectors(5), 4, np.random.default_rng(5), dropped=(0, 1))
    rng = np.random.default_rng(6)
    clients = [SecAggClient(i, rng=rng) for i in range(4)]
    server = SecAggServer(3)
    roster = server.advertise({c.cid: c.public_keys for c in clients})
    inbox = server.route({c.cid: c.share_keys(roster, 3) for c in clients})
    for c in clients:
        c.receive_shares(inbox[c.cid])
    survivors, dropped = server.collect({c.cid: c.mask(np.ones(8)) for c in clients[:3]})
    with pytest.raises(SecAggError, match="shares of client"):
        server.aggregate({c.cid: c.reveal(survivors, dropped) for c in clients[:2]})


def test_deterministic_under_a_seed():
    vectors = _vectors(4)
    a_sum, a = secure_sum(vectors, 3, np.random.default_rng(7), dropped=(2,))
    b_sum, b = secure_sum(vectors, 3, np.random.default_rng(7), dropped=(2,))
    c_sum, c = secure_sum(vectors, 3, np.random.default_rng(8), dropped=(2,))
    assert np.array_equal(a_sum, b_sum) and a.public_keys == b.public_keys
    assert a.ciphertexts == b.ciphertexts
    assert all(np.array_equal(a.masked[i], b.masked[i]) for i in a.masked)
    assert not np.array_equal(a.masked[0], c.masked[0])  # other keys, other masks ...
    assert np.array_equal(a_sum, c_sum)  # ... same exact fixed-point sum
