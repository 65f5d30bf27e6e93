"""ModelEMA: the moving average of the global model that fixed-model training reports."""

from __future__ import annotations

import pytest
import torch

from fednas.federated.ema import ModelEMA


def states(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [{"w": torch.randn(3, generator=g), "bn.running_var": torch.rand(2, generator=g),
             "bn.num_batches_tracked": torch.tensor(i)} for i in range(n)]


def test_average_starts_at_the_first_round_and_matches_the_closed_form():
    d, seq = 0.8, states(5)
    ema = ModelEMA(d)
    for s in seq:
        out = ema.update(s)
    # ē_T = d^(T-1) w_1 + Σ_{t≥2} (1-d) d^(T-t) w_t: the first iterate carries the rest
    T = len(seq)
    expect = d ** (T - 1) * seq[0]["w"] + sum((1 - d) * d ** (T - t) * seq[t - 1]["w"]
                                               for t in range(2, T + 1))
    torch.testing.assert_close(out["w"], expect)
    assert out["bn.num_batches_tracked"].item() == 4  # integer buffers: the latest
    assert ema.updates == T
    first = ModelEMA(d).update(seq[0])
    assert all(torch.equal(first[k], seq[0][k]) for k in first)


def test_decay_zero_is_the_last_iterate_and_inputs_are_not_aliased():
    seq = states(3)
    ema = ModelEMA(0.0)
    for s in seq:
        out = ema.update(s)
    assert torch.equal(out["w"], seq[-1]["w"])
    out["w"].add_(1.0)
    assert not torch.equal(out["w"], seq[-1]["w"])


def test_iterate_noise_shrinks_under_averaging():
    """Noisy iterates around a fixed point: the average is closer than the last iterate."""
    g = torch.Generator().manual_seed(1)
    target = torch.zeros(1000)
    ema = ModelEMA(0.9)
    for _ in range(60):
        last = target + torch.randn(1000, generator=g)
        ema.update({"w": last})
    assert ema.state["w"].norm() < 0.4 * last.norm()  # variance (1-d)/(1+d) ≈ 0.05


def test_checkpoint_round_trip_continues_identically():
    seq = states(6)
    a, b = ModelEMA(0.7), ModelEMA(0.7)
    for s in seq[:3]:
        a.update(s)
    b.load_state_dict(a.state_dict())
    for s in seq[3:]:
        a.update(s)
        b.update(s)
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    assert a.updates == b.updates == 6


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(1.0)
    ema = ModelEMA(0.5)
    ema.update({"w": torch.zeros(2)})
    with pytest.raises(ValueError, match="keys changed"):
        ema.update({"v": torch.zeros(2)})
    with pytest.raises(ValueError, match="ema-decay"):
        ModelEMA(0.9).load_state_dict(ema.state_dict())
