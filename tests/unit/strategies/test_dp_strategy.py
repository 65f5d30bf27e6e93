"""Central DP inside the FedNAS strategy: clipping, uniform votes, BN statistics, ε budget."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import REPO
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fednas.config.loading import load_config
from fednas.privacy.mechanism import PrivacyAccountant
from strategies.dp import CentralDP
from strategies.fednas import FedNAS


def privacy(**kw):
    sets = ["mode=federated", "privacy.mode=central"] + [
        f"privacy.{k.replace('_', '-')}={v}" for k, v in kw.items()]
    return load_config(None, sets).privacy


def run_round(dp, values, sizes, state):
    strategy = FedNAS(None, seed=0, dp=dp, min_train_nodes=1)
    strategy.node_partitions = {10 + i: i for i in range(len(values))}
    messages = sorted(strategy.configure_train(1, ArrayRecord(state), ConfigRecord({"lr": 0.1}),
                                               grid=None), key=lambda m: m.metadata.dst_node_id)
    replies = []
    for msg, value, n in zip(messages, values, sizes, strict=True):
        pid = int(msg.content["config"]["partition-id"])
        out = {k: (v + value if v.is_floating_point() else v) for k, v in state.items()}
        replies.append(Message(RecordDict({"arrays": ArrayRecord(out), "metrics": MetricRecord(
            {"num-examples": n, "partition-id": pid, "diverged": 0})}), reply_to=msg))
    arrays, _ = strategy.aggregate_train(1, replies)
    return strategy, arrays.to_torch_state_dict()


@pytest.fixture
def state():
    return {"fc.weight": torch.zeros(3, 4), "bn.running_mean": torch.zeros(3),
            "bn.running_var": torch.ones(3), "bn.num_batches_tracked": torch.tensor(0)}


def test_without_noise_each_client_is_clipped_and_has_one_vote(state, task_identity):
    acc = PrivacyAccountant()
    dp = CentralDP(privacy(noise_multiplier=0.0, clip_norm=1.0), acc, seed=0)
    # client 0 moves every weight by 1 (norm sqrt(12) > 1: clipped), client 1 by 0.01
    strategy, new = run_round(dp, [1.0, 0.01], [1000, 1], state)
    expected = (1.0 / math.sqrt(12) + 0.01) / 2  # uniform votes despite 1000 vs 1 examples
    torch.testing.assert_close(new["fc.weight"], torch.full((3, 4), expected),
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(new["bn.running_mean"], state["bn.running_mean"])  # not from
    torch.testing.assert_close(new["bn.running_var"], state["bn.running_var"])  # clients
    assert strategy.round_stats["dp_clipped_fraction"] == 0.5
    assert math.isinf(strategy.round_stats["dp_epsilon"]) and acc.steps == 0


def test_noise_is_seeded_accounted_and_resumable(state, task_identity):
    cfg = privacy(noise_multiplier=1.0, clip_norm=0.5)
    acc_a, acc_b = PrivacyAccountant(), PrivacyAccountant()
    sa, a = run_round(CentralDP(cfg, acc_a, seed=3), [0.1, 0.2], [5, 5], state)
    sb, b = run_round(CentralDP(cfg, acc_b, seed=3), [0.1, 0.2], [5, 5], state)
    assert torch.equal(a["fc.weight"], b["fc.weight"])
    assert acc_a.steps == 1 and sa.round_stats["dp_noise_std"] == pytest.approx(0.5)
    ref = PrivacyAccountant()
    ref.step(1.0, 1.0)
    assert sa.round_stats["dp_epsilon"] == ref.epsilon(1e-5)
    restored = CentralDP(cfg, PrivacyAccountant(), seed=99)
    restored.set_state(sa.dp.get_state())
    assert torch.equal(restored.generator.get_state(), sa.dp.generator.get_state())


def test_budget_stops_before_the_round_that_would_exceed_it():
    acc = PrivacyAccountant()
    for _ in range(3):
        acc.step(1.0, 0.5)
    eps3 = acc.epsilon(1e-5)
    acc.step(1.0, 0.5)
    eps4 = acc.epsilon(1e-5)
    dp = CentralDP(privacy(noise_multiplier=1.0, epsilon_budget=(eps3 + eps4) / 2),
                   PrivacyAccountant(), seed=0)
    for _ in range(3):
        assert not dp.exhausted(0.5)
        dp.accountant.step(1.0, 0.5)
    assert dp.exhausted(0.5)


def test_privacy_needs_federated_mode():
    from fednas.errors import ConfigError

    with pytest.raises(ConfigError, match="privacy.mode"):
        load_config(None, ["privacy.mode=central"])


def test_summary_printout_states_epsilon_and_the_budget_stop():
    from rich.console import Console

    from fednas.reporting.summary import print_summary

    console = Console(record=True, width=200)
    print_summary({"scenario": "x", "seed": 0, "dataset": {"name": "d"}, "models": {},
                   "privacy": {"mode": "central", "epsilon": 5.99, "delta": 1e-5, "rounds": 16,
                               "stopped_by_budget": {"phase": "retrain", "round": 1}}}, console)
    text = console.export_text()
    assert "ε = 5.99 at δ = 1e-05 after 16 rounds" in text
    assert "stopped by the ε budget after retrain round 1" in text


def _one_round(cfg, deltas, alpha_keys=("alpha",), seed=0, accountant=None):
    from fednas.federated.aggregation import Contribution

    state = {"w": torch.zeros(20_000, dtype=torch.float64),
             "alpha": torch.zeros(20_000, dtype=torch.float64)}
    contribs = [Contribution({k: state[k] + d[k] for k in state}, dict.fromkeys(state), 1.0, {})
                for d in deltas]
    dp = CentralDP(cfg, accountant or PrivacyAccountant(), seed=seed)
    return dp, dp.aggregate(state, contribs, 0.5, alpha_keys=alpha_keys)


def test_separate_alpha_clip_bounds_each_part_on_its_own():
    cfg = privacy(noise_multiplier=0.0, clip_norm=1.0, alpha_clip_norm=0.05)
    n = 20_000
    # client 0: long weights, short α; client 1: long α, short weights
    deltas = [{"w": torch.full((n,), 1.0, dtype=torch.float64),
               "alpha": torch.full((n,), 1e-6, dtype=torch.float64)},
              {"w": torch.full((n,), 1e-6, dtype=torch.float64),
               "alpha": torch.full((n,), 1.0, dtype=torch.float64)}]
    dp, new = _one_round(cfg, deltas)
    root = math.sqrt(n)
    # each part clipped to its own bound; joint clipping (C = 1) would have shrunk the α of
    # client 0 and the weights of client 1 by the other part's length
    torch.testing.assert_close(new["w"], torch.full((n,), (1.0 / root + 1e-6) / 2,
                                                    dtype=torch.float64))
    torch.testing.assert_close(new["alpha"], torch.full((n,), (1e-6 + 0.05 / root) / 2,
                                                        dtype=torch.float64))
    assert dp.last["dp_alpha_clipped_fraction"] == 0.5 and dp.last["dp_clipped_fraction"] == 0.5
    assert dp.last["dp_alpha_clip_norm"] == 0.05


@pytest.mark.parametrize("share", [0.2, 0.5])
def test_split_noise_std_per_part_and_accounting_at_sigma(share):
    sigma, c, c_alpha, clients = 1.2, 1.0, 0.05, 4
    cfg = privacy(noise_multiplier=sigma, clip_norm=c, alpha_clip_norm=c_alpha,
                  alpha_noise_share=share)
    zero = {"w": torch.zeros(20_000, dtype=torch.float64),
            "alpha": torch.zeros(20_000, dtype=torch.float64)}
    acc = PrivacyAccountant()
    dp, new = _one_round(cfg, [zero] * clients, seed=5, accountant=acc)
    std_alpha = sigma / math.sqrt(share) * c_alpha / clients
    std_w = sigma / math.sqrt(1 - share) * c / clients
    assert new["alpha"].std().item() == pytest.approx(std_alpha, rel=0.03)
    assert new["w"].std().item() == pytest.approx(std_w, rel=0.03)
    assert dp.last["dp_noise_std"] == pytest.approx(std_w * clients)
    assert dp.last["dp_alpha_noise_std"] == pytest.approx(std_alpha * clients)
    # the two releases compose to one Gaussian mechanism of multiplier σ: 1/σ² = Σ 1/σ_g²
    assert (share + (1 - share)) / sigma**2 == pytest.approx(
        (std_alpha * clients / c_alpha) ** -2 + (std_w * clients / c) ** -2)
    ref = PrivacyAccountant()
    ref.step(sigma, 0.5)
    assert acc.steps == 1 and dp.last["dp_epsilon"] == ref.epsilon(1e-5)


def test_joint_clipping_ignores_alpha_keys_without_alpha_clip_norm():
    sigma, clients = 1.2, 4
    cfg = privacy(noise_multiplier=sigma, clip_norm=1.0)
    zero = {"w": torch.zeros(20_000, dtype=torch.float64),
            "alpha": torch.zeros(20_000, dtype=torch.float64)}
    dp, new = _one_round(cfg, [zero] * clients)
    for key in ("w", "alpha"):
        assert new[key].std().item() == pytest.approx(sigma / clients, rel=0.03)
    assert "dp_alpha_noise_std" not in dp.last


def test_split_noise_rejects_bad_shares_and_alpha_clip_needs_central_search():
    from fednas.errors import ConfigError
    from fednas.privacy.mechanism import split_noise

    assert split_noise(2.0, {"a": 0.25, "b": 0.75}) == pytest.approx(
        {"a": 4.0, "b": 2.0 / math.sqrt(0.75)})
    with pytest.raises(ValueError, match="sum to 1"):
        split_noise(1.0, {"a": 0.5, "b": 0.6})
    with pytest.raises(ConfigError, match="privacy.alpha-clip-norm"):
        load_config(None, ["mode=federated", "privacy.mode=local", "privacy.alpha-clip-norm=0.1"])
    # DP off: the scenario's privacy keys wait unused (bench/privacy.py runs dp_fashion so)
    load_config(REPO / "simulations/dp_fashion.toml", ["privacy.mode=off"])
    with pytest.raises(ConfigError, match="privacy.alpha-clip-norm.*search"):
        load_config(None, ["mode=federated", "privacy.mode=central", "phases=['baseline']",
                           "privacy.alpha-clip-norm=0.1"])
    with pytest.raises(ConfigError, match="privacy.alpha-noise-share"):
        privacy(alpha_noise_share=1.0)
