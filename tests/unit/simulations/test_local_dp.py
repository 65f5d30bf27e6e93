"""Local DP through Flower's LocalDpMod: clipped + noised float arrays, integer buffers dropped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fednas.config.loading import load_config
from simulations.local_dp import make_local_dp_mod


def _cfg(mode: str):
    return load_config(None, ["mode=federated", f"privacy.mode={mode}", "privacy.clip-norm=0.5",
                              "privacy.local-epsilon=1.0", "privacy.delta=1e-5"])


def _exchange(cfg, task_identity_unused=None):
    state = {"w": torch.zeros(200), "bn.num_batches_tracked": torch.tensor(3)}
    msg = Message(RecordDict({"arrays": ArrayRecord(state), "config": ConfigRecord({})}),
                  dst_node_id=5, message_type="train")

    def app(m, _ctx):
        got = m.content["arrays"].to_torch_state_dict()
        out = {"w": got["w"] + 10.0, "bn.num_batches_tracked": got["bn.num_batches_tracked"] + 1}
        return Message(RecordDict({"arrays": ArrayRecord(out),
                                   "metrics": MetricRecord({"num-examples": 1})}), reply_to=m)

    np.random.seed(0)
    return make_local_dp_mod(lambda _ctx: cfg)(msg, None, app)


def test_local_mode_clips_noises_and_drops_integer_buffers(task_identity):
    reply = _exchange(_cfg("local"))
    assert not reply.has_error()
    out = reply.content["arrays"].to_torch_state_dict()
    assert set(out) == {"w"}  # the integer buffer never leaves the client
    sigma = 0.5 * np.sqrt(2 * np.log(1.25 / 1e-5)) / 1.0
    noise = out["w"].double() - 0.5 / np.sqrt(200)  # clipped update: norm 0.5 spread evenly
    assert float(noise.std()) == pytest.approx(sigma, rel=0.15)
    assert abs(float(out["w"].mean())) < 1.0  # the update of +10 per entry was clipped


def test_other_modes_pass_through(task_identity):
    reply = _exchange(_cfg("off"))
    out = reply.content["arrays"].to_torch_state_dict()
    assert torch.equal(out["w"], torch.full((200,), 10.0))
    assert int(out["bn.num_batches_tracked"]) == 4


def test_local_epsilon_above_one_is_rejected():
    from fednas.errors import ConfigError

    with pytest.raises(ConfigError, match="privacy.local-epsilon"):
        load_config(None, ["mode=federated", "privacy.mode=local", "privacy.local-epsilon=2"])
