"""Straggler simulation for device tiers (issue 31): simulated local time and deadlines.

A client's **simulated local time** in a round is its local work divided by its tier's speed::

    time = samples × passes × (FLOPs of the model it trains / reference FLOPs)
           × sample_s / speed

``samples`` are the training samples it processes in the round (local epochs × the batches
of its split, capped by ``federation.local-steps`` on the search route), ``passes`` the
forward + backward passes per sample (1 for plain training; the sandwich rule's widths and
the α step add theirs), ``sample_s`` the seconds a speed-1 device needs per sample of the
reference model (``devices.sample-s``). It is a model of the work, not a measurement: the
simulation itself runs every client on the same CPUs.

A **deadline** (``devices.deadline-s``, simulated seconds) drops every sampled client whose
time exceeds it, as a real round-timeout would; the round then lasts the deadline (the
server waited for it), otherwise the slowest kept client's time. The drop depends only on
the config, so it is deterministic.
"""

from __future__ import annotations


def local_time(samples: float, passes: float, flops: float, reference_flops: float,
               sample_s: float, speed: float) -> float:
    """Simulated seconds of one client's local work (see the module docstring)."""
    return samples * passes * (flops / max(reference_flops, 1.0)) * sample_s / speed


def deadline_round(times: dict[int, float], deadline: float
                   ) -> tuple[list[int], list[int], float]:
    """``(kept, late, seconds)`` of a round whose sampled clients take ``times`` (partition id
    -> simulated seconds) under ``deadline`` (0 = none): the late clients (time > deadline)
    in id order and the round's simulated duration."""
    late = sorted(p for p, t in times.items() if deadline and t > deadline)
    kept = sorted(p for p in times if p not in set(late))
    seconds = deadline if late else max((times[p] for p in kept), default=0.0)
    return kept, late, float(seconds)
