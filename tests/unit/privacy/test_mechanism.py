"""Client-level DP: clipping, the noisy masked mean, adaptive clipping, the RDP accountant."""

from __future__ import annotations

import json
import math

import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from fednas.federated.aggregation import Contribution, masked_weighted_mean
from fednas.privacy.mechanism import (
    AdaptiveClipping,
    PrivacyAccountant,
    clip_update,
    clipped_sum,
    contribution_delta,
    noise_multiplier_for,
    noisy_masked_mean,
    sensitivity,
    update_norm,
)

SLACK = 1 + 1e-6  # float32 rounding of a scaled tensor


def _delta(seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": scale * torch.randn(4, 3, generator=g), "b": scale * torch.randn(3, generator=g),
            "alpha": scale * torch.randn(2, 5, generator=g),
            "bn.num_batches_tracked": torch.tensor(7)}


def test_joint_clip_bounds_norm_keeps_direction_and_integers():
    delta = _delta(0, scale=3.0)
    norm = update_norm(delta)
    floats = [v for v in delta.values() if v.is_floating_point()]
    assert norm == pytest.approx(math.sqrt(sum(float(v.double().pow(2).sum()) for v in floats)))
    clipped, norms = clip_update(delta, 1.0)
    assert norms == {"all": pytest.approx(norm)}
    assert update_norm(clipped) <= 1.0 * SLACK
    assert update_norm(clipped) == pytest.approx(1.0, rel=1e-6)
    for key in ("w", "b", "alpha"):
        torch.testing.assert_close(clipped[key], delta[key] / norm)
        assert clipped[key].dtype == delta[key].dtype
    assert clipped["bn.num_batches_tracked"] is delta["bn.num_batches_tracked"]
    small, _ = clip_update(delta, 10 * norm)  # already within the bound: unchanged
    assert all(small[k] is delta[k] for k in delta)
    with pytest.raises(ValueError, match="not finite"):
        clip_update({"w": torch.tensor([float("nan")])}, 1.0)


def test_group_clip_uses_each_groups_bound():
    delta = _delta(1, scale=5.0)
    bounds = {"alpha": 0.1, "rest": 1.0}
    clipped, norms = clip_update(delta, bounds, groups={"alpha": ["alpha"]})
    assert set(norms) == {"alpha", "rest"}
    assert norms["alpha"] == pytest.approx(update_norm(delta, ["alpha"]))
    assert update_norm(clipped, ["alpha"]) <= 0.1 * SLACK
    assert update_norm(clipped, ["w", "b"]) <= 1.0 * SLACK
    assert update_norm(clipped) <= sensitivity(bounds) * SLACK
    assert sensitivity(bounds) == pytest.approx(math.sqrt(1.01))
    with pytest.raises(ValueError, match="'rest'"):
        clip_update(delta, {"alpha": 0.1}, groups={"alpha": ["alpha"]})


def _contribs(global_state, n, seed=0, scale=3.0, clip=1.0):
    out = []
    for k in range(n):
        g = torch.Generator().manual_seed(seed + k)
        regions = {key: v + scale * torch.randn(v.shape, generator=g)
                   for key, v in global_state.items()}
        d = contribution_delta(global_state, Contribution(regions, dict.fromkeys(regions), 1.0))
        clipped, _ = clip_update(d.regions, clip)
        out.append(Contribution(clipped, d.slices, d.weight))
    return out


def test_noise_std_on_the_mean_is_sigma_c_over_n():
    n, sigma, clip = 5, 1.3, 0.7
    state = {"w": torch.zeros(4000, dtype=torch.float64),
             "v": torch.ones(1000, dtype=torch.float64)}
    contribs = _contribs(state, n, clip=clip)
    for c in contribs:
        assert update_norm(c.regions) <= clip * SLACK
    exact = noisy_masked_mean(state, contribs, 0.0, clip, torch.Generator())
    gen = torch.Generator().manual_seed(42)
    noise = torch.cat([torch.cat([(noisy_masked_mean(state, contribs, sigma, clip, gen)[k]
                                   - exact[k]) for k in state]) for _ in range(40)])
    assert noise.numel() == 200_000
    assert noise.std().item() == pytest.approx(sigma * clip / n, rel=0.02)
    assert abs(noise.mean().item()) < 4 * sigma * clip / n / math.sqrt(noise.numel())


def test_zero_noise_is_the_uniform_masked_mean():
    state = {"w": torch.randn(6, 4, generator=torch.Generator().manual_seed(0)),
             "alpha": torch.zeros(2, 3), "steps": torch.tensor(3)}
    halves = [{"w": (slice(0, 3), slice(None)), "alpha": None, "steps": None},
              {"w": (slice(2, 6), slice(None)), "alpha": None, "steps": None}]
    masks = [torch.tensor([[True, False, True]] * 2), torch.tensor([[True, False, False]] * 2)]
    contribs, absolute = [], []
    for k, (sl, m) in enumerate(zip(halves, masks, strict=True)):
        g = torch.Generator().manual_seed(10 + k)
        regions = {"w": state["w"][sl["w"]] + 0.01 * torch.randn(sl["w"][0].stop - sl["w"][0].start,
                                                                 4, generator=g),
                   "alpha": 0.01 * torch.randn(2, 3, generator=g), "steps": torch.tensor(9)}
        absolute.append(Contribution(regions, sl, 1.0, {"alpha": m}))
        contribs.append(contribution_delta(state, Contribution(regions, sl, 123.0 * (k + 1),
                                                               {"alpha": m})))
    assert "steps" not in contribs[0].regions
    assert torch.all(contribs[0].regions["alpha"][~masks[0]] == 0)
    out = noisy_masked_mean(state, contribs, 0.0, 10.0, torch.Generator())
    ref = masked_weighted_mean(state, absolute)  # equal weights: the same per-entry mean
    for key in state:
        torch.testing.assert_close(out[key], ref[key])
    assert torch.all(out["alpha"][:, 1] == 0)  # candidate 1 in nobody's shard: kept
    assert out["steps"] is not state["steps"] and out["steps"] == 3


def test_masked_shard_noise_per_entry_count():
    sigma, clip = 2.0, 0.5
    state = {"w": torch.zeros(3, 20000, dtype=torch.float64)}
    zero = [Contribution({"w": torch.zeros(1, 20000, dtype=torch.float64)},
                         {"w": (slice(r, r + 1), slice(None))}, 1.0) for r in (0, 1)]
    both = Contribution({"w": torch.zeros(2, 20000, dtype=torch.float64)},
                        {"w": (slice(0, 2), slice(None))}, 1.0)
    out = noisy_masked_mean(state, [*zero, both], sigma, clip, torch.Generator().manual_seed(0))
    w = out["w"]
    assert w[0].std().item() == pytest.approx(sigma * clip / 2, rel=0.03)  # 2 clients each
    assert w[1].std().item() == pytest.approx(sigma * clip / 2, rel=0.03)
    assert torch.all(w[2] == 0)  # nobody trained row 2: no noise, no update
    one = noisy_masked_mean(state, zero[:1], sigma, clip, torch.Generator().manual_seed(0))
    assert one["w"][0].std().item() == pytest.approx(sigma * clip, rel=0.03)


def test_noisy_mean_is_deterministic_and_reclips():
    state = {"w": torch.zeros(50)}
    contribs = _contribs(state, 3)
    a = noisy_masked_mean(state, contribs, 1.0, 1.0, torch.Generator().manual_seed(7))
    b = noisy_masked_mean(state, contribs, 1.0, 1.0, torch.Generator().manual_seed(7))
    assert torch.equal(a["w"], b["w"])
    big = Contribution({"w": torch.full((50,), 10.0)}, {"w": None}, 1.0)
    out = noisy_masked_mean(state, [big], 0.0, 1.0, torch.Generator())
    assert update_norm(out) == pytest.approx(1.0, rel=1e-6)
    raw = noisy_masked_mean(state, [big], 0.0, 1.0, torch.Generator(), reclip=False)
    assert update_norm(raw) == pytest.approx(update_norm(big.regions))


def test_adaptive_clipping_tracks_the_quantile_and_resumes():
    norms = [0.1 * i for i in range(1, 101)]  # median 5.05
    clip = AdaptiveClipping(clip_norm=0.5, target_quantile=0.5, learning_rate=0.2)
    first = clip.update(norms, torch.Generator())
    assert first == pytest.approx(0.5 * math.exp(-0.2 * (0.05 - 0.5)))
    for _ in range(200):
        clip.update(norms, torch.Generator())
    assert 4.5 < clip.clip_norm < 5.6
    noisy = AdaptiveClipping(1.0, 0.8, 0.2, count_noise=5.0)
    twin = AdaptiveClipping()
    twin.load_state_dict(json.loads(json.dumps(noisy.state_dict())))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert [noisy.update(norms, g1) for _ in range(5)] == [twin.update(norms, g2)
                                                          for _ in range(5)]
    assert noisy.update_noise_multiplier(1.0) == pytest.approx((1 - 1 / 100) ** -0.5)
    with pytest.raises(ValueError, match="too small"):
        AdaptiveClipping(count_noise=0.4).update_noise_multiplier(1.0)
    with pytest.raises(ValueError):
        AdaptiveClipping(target_quantile=1.5)


def test_accountant_matches_opacus_exactly():
    acc, ref = PrivacyAccountant(), RDPAccountant()
    schedule = [(1.0, 0.1)] * 30 + [(1.2, 0.1)] * 10 + [(1.0, 0.05)] * 10
    for sigma, q in schedule:
        acc.step(sigma, q)
        ref.step(noise_multiplier=sigma, sample_rate=q)
    assert acc.epsilon(1e-5) == ref.get_epsilon(delta=1e-5)
    assert acc.steps == 50 and acc.history == [(1.0, 0.1, 30), (1.2, 0.1, 10), (1.0, 0.05, 10)]
    plain = PrivacyAccountant()
    for _ in range(50):
        plain.step(1.0, 0.1)
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = compute_rdp(q=0.1, noise_multiplier=1.0, steps=50, orders=orders)
    eps, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=1e-5)
    spent = plain.epsilon(1e-5)
    assert spent == float(eps)
    assert spent == pytest.approx(5.88, abs=0.005)  # INSTALL.md's reference point
    assert PrivacyAccountant().epsilon(1e-5) == 0


def test_would_exceed_does_not_mutate_and_state_resumes_exactly():
    acc = PrivacyAccountant()
    for _ in range(20):
        acc.step(1.0, 0.1)
    history = acc.history
    nxt = PrivacyAccountant()
    nxt.load_state_dict(acc.state_dict())
    nxt.step(1.0, 0.1)
    after = nxt.epsilon(1e-5)
    assert acc.would_exceed(after - 1e-9, 1e-5, 1.0, 0.1)
    assert not acc.would_exceed(after + 1e-9, 1e-5, 1.0, 0.1)
    assert acc.would_exceed(100.0, 1e-5, 0.0, 0.1)  # no noise: ε = ∞
    assert acc.history == history  # ε is a function of the history alone
    resumed = PrivacyAccountant()
    resumed.load_state_dict(json.loads(json.dumps(acc.state_dict())))
    for a in (acc, resumed):
        for _ in range(5):
            a.step(1.1, 0.1)
    assert resumed.epsilon(1e-5) == acc.epsilon(1e-5)
    with pytest.raises(ValueError, match="sample_rate"):
        acc.step(1.0, 0.0)
    with pytest.raises(ValueError, match="rdp"):
        acc.load_state_dict({"mechanism": "prv", "history": []})


def test_noise_multiplier_for_reaches_the_target():
    sigma = noise_multiplier_for(2.0, 1e-5, 0.1, 20)
    acc = PrivacyAccountant()
    for _ in range(20):
        acc.step(sigma, 0.1)
    assert 2.0 - 0.01 <= acc.epsilon(1e-5) <= 2.0
    with pytest.raises(ValueError):
        noise_multiplier_for(6.0, 1e-5, 0.1, 0)


def test_a_cohorts_clipped_sum_counts_as_its_clients():
    """Clipping on the worker and summing there (cohort mode) gives the server's per-client
    result up to float64 summation order, with the same noise draw."""
    g = torch.Generator().manual_seed(3)
    state = {"w": torch.randn(5, 4, generator=g), "bn.running_mean": torch.zeros(4),
             "bn.num_batches_tracked": torch.tensor(2)}
    clients = [{k: v + (0.2 + i) * torch.randn(v.shape, generator=g)
                if v.is_floating_point() else v for k, v in state.items()} for i in range(5)]
    skip = ("running_mean", "num_batches_tracked")
    per_client, norms = [], []
    for c in clients:
        kept = {k: v for k, v in c.items() if not k.endswith(skip)}
        d = contribution_delta(state, Contribution(kept, dict.fromkeys(kept), 1.0))
        clipped, norm = clip_update(d.regions, 1.5)
        per_client.append(Contribution(clipped, d.slices, 1.0))
        norms.append(norm["all"])
    first, n1 = clipped_sum(state, clients[:2], 1.5, skip)
    second, n2 = clipped_sum(state, clients[2:], 1.5, skip)
    assert set(first) == {"w"} and first["w"].dtype == torch.float64
    assert n1 + n2 == pytest.approx(norms, rel=1e-12)
    assert sum(n > 1.5 for n in norms) >= 2  # some were clipped
    sums = [Contribution(first, {}, 1.0, clients=2), Contribution(second, {}, 1.0, clients=3)]
    for sigma in (0.0, 0.8):
        one = noisy_masked_mean(state, per_client, sigma, 1.5, torch.Generator().manual_seed(1))
        two = noisy_masked_mean(state, sums, sigma, 1.5, torch.Generator().manual_seed(1))
        torch.testing.assert_close(two["w"], one["w"], rtol=1e-6, atol=1e-7)
        assert not torch.equal(one["w"], state["w"])
    with pytest.raises(ValueError, match="entry masks"):
        noisy_masked_mean(state, [Contribution(first, {}, 1.0, {"w": torch.ones(5, 4)}, 2)],
                          0.0, 1.5, torch.Generator())
