"""FedEx tuner: θ stays a distribution, concentrates on the best arm, matches a hand update."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fednas.errors import CheckpointError, ConfigError
from fednas.tuning.fedex import FedEx
from fednas.tuning.fedex_space import HPRange, centre_and_perturbations, product_grid

CONFIGS = [{"lr": lr} for lr in (0.3, 0.1, 0.03, 0.01, 0.003)]


def _assert_distribution(tuner: FedEx) -> None:
    for theta in tuner.theta():
        assert np.isfinite(theta).all() and (theta >= 0).all()
        assert math.isclose(theta.sum(), 1.0, rel_tol=0, abs_tol=1e-9)


def _play(tuner: FedEx, loss_of, rng: np.random.Generator, rounds: int, clients: int = 10):
    """Run a synthetic bandit: each client samples from θ and reports loss_of(indices)."""
    for _ in range(rounds):
        choices = [tuner.sample(rng)[0] for _ in range(clients)]
        losses = [loss_of(c, rng) for c in choices]
        tuner.update(choices, losses, weights=rng.integers(20, 60, size=clients).tolist())


def test_theta_stays_a_distribution_under_random_and_nonfinite_losses():
    rng = np.random.default_rng(0)
    bad = [np.nan, np.inf, -np.inf, 1.7e308, -1.7e308]
    for tuner in (FedEx(CONFIGS), FedEx(CONFIGS, schedule="constant", eta0=50.0,
                                        baseline_discount=0.0, entropy_cutoff=0.0),
                  FedEx(grid={"lr": [0.1, 0.01], "epochs": [1, 2, 3]}, use_improvement=True)):
        for _ in range(150):
            n = int(rng.integers(1, 8))
            choices = [tuner.sample(rng)[0] for _ in range(n)]
            losses = [bad[rng.integers(5)] if rng.random() < 0.3 else rng.normal(2, 3)
                      for _ in range(n)]
            pre = rng.normal(2, 1, size=n).tolist()
            tuner.update(choices, losses, rng.integers(0, 5, size=n).tolist(), pre_losses=pre)
            _assert_distribution(tuner)
            assert all(np.isfinite(f.z).all() for f in tuner.factors)
        assert all(0.0 <= h <= math.log(len(t)) + 1e-9 for h, t in zip(
            tuner.entropy(), tuner.theta(), strict=True))


def test_concentrates_on_the_best_config():
    means = [1.0, 1.0, 0.2, 1.0, 1.0]
    tuner = FedEx(CONFIGS)
    _play(tuner, lambda c, rng: means[c[0]] + rng.normal(0, 0.1), np.random.default_rng(1), 50)
    assert tuner.theta()[0][2] > 0.9
    assert tuner.best() == {"lr": 0.03}


def test_product_mode_factors_concentrate_independently():
    lr_cost, ep_cost = [0.8, 0.1, 0.6], [0.5, 0.4, 0.0]
    grid = {"lr": [0.1, 0.01, 0.001], "epochs": [1, 2, 3]}
    tuner = FedEx(grid=grid, base={"lr": 0.01, "epochs": 1, "momentum": 0.9})
    _play(tuner, lambda c, rng: lr_cost[c[0]] + ep_cost[c[1]] + rng.normal(0, 0.1),
          np.random.default_rng(2), 60)
    theta_lr, theta_ep = tuner.theta()
    assert theta_lr[1] > 0.9 and theta_ep[2] > 0.9
    assert tuner.best() == {"lr": 0.01, "epochs": 3, "momentum": 0.9}
    indices, config = tuner.sample(np.random.default_rng(0))
    assert len(indices) == 2 and config["momentum"] == 0.9


def test_divergent_config_is_penalised_without_raising():
    tuner = FedEx(CONFIGS[:4])
    bad = {0: np.nan, 1: np.inf}
    _play(tuner, lambda c, rng: bad.get(c[0], 1.0 + rng.normal(0, 0.1)),
          np.random.default_rng(3), 30)
    theta = tuner.theta()[0]
    assert theta[0] < 0.05 and theta[1] < 0.05
    _assert_distribution(tuner)
    assert tuner.max_abs_score < 2.0  # only finite losses count towards the adaptive penalty


def test_fixed_divergence_penalty_is_the_score_of_a_nan():
    a, b = FedEx(CONFIGS[:2], divergence_penalty=7.0), FedEx(CONFIGS[:2])
    a.update([(0,), (1,)], [np.nan, 1.0], [1, 1])
    b.update([(0,), (1,)], [7.0, 1.0], [1, 1])
    assert np.array_equal(a.theta()[0], b.theta()[0])


def _softmax_log(z: np.ndarray) -> np.ndarray:
    return z - np.log(np.sum(np.exp(z)))


def test_gradient_and_update_match_hand_computation():
    tuner = FedEx([{"lr": 0.1}, {"lr": 0.01}, {"lr": 0.001}], baseline_discount=0.5)
    eta0 = math.sqrt(2 * math.log(3))
    # Round 1: λ = 0 (no past round). w = [1, 2, 1] / 4; θ = 1/3 each.
    grad1 = np.array([0.25 * 1.0 * 3, 0.0, (0.5 * 0.5 + 0.25 * 2.0) * 3])
    np.testing.assert_allclose(
        tuner.gradient([(0,), (2,), (2,)], [1.0, 0.5, 2.0], [1, 2, 1])[0], grad1, rtol=1e-12)
    tuner.update([(0,), (2,), (2,)], [1.0, 0.5, 2.0], [1, 2, 1])
    z1 = _softmax_log(np.full(3, -math.log(3)) - eta0 / 2.25 * grad1)
    np.testing.assert_allclose(tuner.factors[0].z, z1, rtol=1e-12)
    # Round 2: λ = round 1's weighted loss 0.25·1 + 0.5·0.5 + 0.25·2 = 1.0. w = [1, 1, 2] / 4.
    th = np.exp(z1)
    grad2 = np.array([0.25 * (3.0 - 1.0) / th[0], (0.25 * (0.5 - 1.0) + 0.5 * (1.5 - 1.0)) / th[1],
                      0.0])
    np.testing.assert_allclose(
        tuner.gradient([(1,), (0,), (1,)], [0.5, 3.0, 1.5], [1, 1, 2])[0], grad2, rtol=1e-12)
    tuner.update([(1,), (0,), (1,)], [0.5, 3.0, 1.5], [1, 1, 2])
    z2 = _softmax_log(z1 - eta0 / np.max(np.abs(grad2)) * grad2)
    np.testing.assert_allclose(tuner.factors[0].z, z2, rtol=1e-12)
    # Round 3: λ = (0.5·1.0 + 1.625) / (0.5 + 1) with round 2's loss 0.125 + 0.75 + 0.75.
    lam = (0.5 * 1.0 + 1.625) / 1.5
    grad3 = tuner.gradient([(2,)], [4.0], [5])[0]
    assert math.isclose(grad3[2], (4.0 - lam) / math.exp(z2[2]), rel_tol=1e-12)


def test_improvement_mode_scores_the_change():
    tuner = FedEx(CONFIGS[:2], use_improvement=True)
    grad = tuner.gradient([(0,), (1,)], [1.0, 2.0], [1, 3], pre_losses=[1.5, 1.0])[0]
    np.testing.assert_allclose(grad, [0.25 * -0.5 * 2, 0.75 * 1.0 * 2], rtol=1e-12)
    with pytest.raises(ValueError, match="pre_losses"):
        tuner.update([(0,)], [1.0], [1])


def test_state_dict_round_trip_is_exact():
    rng = np.random.default_rng(4)
    tuner = FedEx(grid={"lr": [0.1, 0.01, 0.001], "wd": [0.0, 1e-4]}, baseline_discount=0.7)
    _play(tuner, lambda c, rng: c[0] + 0.5 * c[1] + rng.normal(), rng, 5)
    state = json.loads(json.dumps(tuner.state_dict(), allow_nan=False))
    copy = FedEx.from_state_dict(state)
    other = FedEx(grid={"lr": [0.1, 0.01, 0.001], "wd": [0.0, 1e-4]})
    other.load_state_dict(state)
    for t in (copy, other):
        for a, b in zip(tuner.theta(), t.theta(), strict=True):
            assert a.tobytes() == b.tobytes()
    step = ([(0, 1), (2, 0), (1, 1)], [0.3, np.nan, 1.2], [10, 20, 30])
    for t in (tuner, copy, other):
        t.update(*step)
    for t in (copy, other):
        assert t.state_dict() == tuner.state_dict()
    with pytest.raises(CheckpointError):
        FedEx(CONFIGS).load_state_dict(state)


def test_entropy_cutoff_stops_a_factor_and_it_then_returns_argmax():
    tuner = FedEx(CONFIGS[:2], entropy_cutoff=0.3)
    for _ in range(20):
        tuner.update([(0,), (1,)], [0.0, 1.0], [1, 1])
    factor = tuner.factors[0]
    assert factor.stopped and factor.entropy() < 0.3
    z, steps = factor.z.copy(), factor.steps
    tuner.update([(0,), (1,)], [5.0, 0.0], [1, 1])
    assert np.array_equal(factor.z, z) and factor.steps == steps
    assert {tuner.sample(np.random.default_rng(i))[0] for i in range(20)} == {(0,)}


def test_empty_or_zero_weight_round_changes_nothing():
    tuner = FedEx(CONFIGS)
    before = tuner.state_dict()
    tuner.update([], [], [])
    tuner.update([(1,), (2,)], [1.0, np.nan], [0, 0])
    assert tuner.state_dict() == before


def test_centre_and_perturbations_stay_in_range():
    ranges = [HPRange("lr", 1e-4, 1.0, log=True), HPRange("momentum", 0.0, 1.0),
              HPRange("epochs", 1, 5, integer=True)]
    centre = {"lr": 0.01, "momentum": 0.9, "epochs": 2, "batch": 32}
    configs = centre_and_perturbations(centre, ranges, 8, np.random.default_rng(5), scale=0.5)
    assert len(configs) == 8 and configs[0] == centre
    for c in configs:
        assert 1e-4 <= c["lr"] <= 1.0 and 0.0 <= c["momentum"] <= 1.0 and c["batch"] == 32
        assert isinstance(c["epochs"], int) and 1 <= c["epochs"] <= 5
    assert len({c["lr"] for c in configs}) == 8
    rng = np.random.default_rng(0)
    assert centre_and_perturbations(centre, ranges, 3, rng, scale=0.0) == [centre] * 3


def test_product_grid_values():
    ranges = [HPRange("lr", 1e-3, 1e-1, log=True), HPRange("epochs", 1, 3, integer=True)]
    grid = product_grid(ranges, 3)
    np.testing.assert_allclose(grid["lr"], [1e-3, 1e-2, 1e-1])
    assert grid["epochs"] == [1, 2, 3]
    random = product_grid([HPRange("lr", 1e-3, 1e-1, log=True)], 4, np.random.default_rng(0))
    assert random["lr"] == sorted(random["lr"]) and len(random["lr"]) == 4


@pytest.mark.parametrize(("make", "key"), [
    (lambda: FedEx([]), "fedex.configs"),
    (lambda: FedEx(), "fedex.configs"),
    (lambda: FedEx([{"lr": 0.1}, {"wd": 0.1}]), "fedex.configs"),
    (lambda: FedEx(grid={"lr": []}), "fedex.grid.lr"),
    (lambda: FedEx(grid={"lr": [0.1]}, base={"wd": 0.0}), "fedex.grid.lr"),
    (lambda: FedEx(CONFIGS, schedule="sometimes"), "fedex.schedule"),
    (lambda: FedEx(CONFIGS, eta0=0.0), "fedex.eta0"),
    (lambda: FedEx(CONFIGS, baseline_discount=1.5), "fedex.baseline-discount"),
    (lambda: FedEx(CONFIGS, entropy_cutoff=-1.0), "fedex.entropy-cutoff"),
    (lambda: FedEx(CONFIGS, divergence_penalty=math.inf), "fedex.divergence-penalty"),
    (lambda: product_grid([HPRange("lr", 0.1, 0.1)], 3), "fedex.ranges.lr"),
    (lambda: product_grid([HPRange("lr", 0.0, 0.1, log=True)], 3), "fedex.ranges.lr"),
    (lambda: product_grid([HPRange("lr", 0.01, 0.1)], 0), "fedex.configs"),
    (lambda: centre_and_perturbations({"lr": 0.1}, [HPRange("wd", 0, 1)], 3,
                                      np.random.default_rng(0)), "fedex.ranges.wd"),
    (lambda: centre_and_perturbations({"lr": 0.1}, [HPRange("lr", 0.01, 1)], 0,
                                      np.random.default_rng(0)), "fedex.configs"),
    (lambda: centre_and_perturbations({"lr": 5.0}, [HPRange("lr", 0.01, 1)], 2,
                                      np.random.default_rng(0)), "fedex.centre.lr"),
])
def test_validation_errors_name_the_key(make, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + ":"):
        make()


def test_bad_replies_raise_value_error():
    tuner = FedEx(CONFIGS)
    with pytest.raises(ValueError, match="out of range"):
        tuner.update([(7,)], [1.0], [1])
    with pytest.raises(ValueError, match="length"):
        tuner.update([(0,)], [1.0, 2.0], [1])
    with pytest.raises(ValueError, match="weights"):
        tuner.update([(0,)], [1.0], [-1])


@pytest.mark.parametrize("schedule, eta0", [("auto", None), ("adaptive", None),
                                            ("scale", 0.1), ("constant", 0.2),
                                            ("aggressive", None)])
def test_schedules_match_hand_computed_steps(schedule, eta0):
    """Two rounds of three configs, computed by the formulas of mkhodak/FedEx ``hyper.py``:
    ∇_j = Σ_i w_i (s_i − λ) 1[c_i = j] / θ_j and z ← z − η∇, z ← z − logsumexp(z)."""
    rounds = [([0, 1], [1.0, 2.0]), ([2, 0], [0.5, 1.0])]
    k, base = 3, math.sqrt(2 * math.log(3))
    z, store, baseline = np.full(k, -math.log(k)), 0.0, 0.0
    for t, (choices, losses) in enumerate(rounds, start=1):
        theta, w = np.exp(z), np.array([0.5, 0.5])
        grad = np.zeros(k)
        for c, s, wi in zip(choices, losses, w, strict=True):
            grad[c] += wi * (s - baseline) / theta[c]
        store += np.abs(grad).max() ** 2
        e0 = base if eta0 is None else eta0
        eta = {"auto": e0 / math.sqrt(t), "adaptive": e0 / math.sqrt(store),
               "scale": e0 * base, "constant": e0,
               "aggressive": e0 / np.abs(grad).max()}[schedule]
        z = z - eta * grad
        z = z - np.log(np.exp(z).sum())
        baseline = float(np.dot(w, losses))  # discount 0: the last round's weighted mean
    tuner = FedEx([{"lr": v} for v in (0.1, 0.01, 0.001)], schedule=schedule, eta0=eta0,
                  baseline_discount=0.0, entropy_cutoff=0.0)
    for choices, losses in rounds:
        tuner.update([[c] for c in choices], losses, [1, 1])
    np.testing.assert_allclose(tuner.theta()[0], np.exp(z), rtol=1e-12, atol=1e-15)
    restored = FedEx.from_state_dict(json.loads(json.dumps(tuner.state_dict())))
    assert [f.rounds for f in restored.factors] == [2]
    assert restored.factors[0].log_store == tuner.factors[0].log_store
