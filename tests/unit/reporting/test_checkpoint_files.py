"""Checkpoints and run-dir files: weights-only loading, fingerprints, torn JSON lines."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from fednas.errors import CheckpointError
from fednas.reporting.checkpoint import (
    LATEST,
    load_checkpoint,
    save_checkpoint,
    verify_config,
    verify_data,
)
from fednas.reporting.fingerprint import (
    RESUMABLE,
    changed_keys,
    config_fingerprint,
    data_fingerprint,
)
from fednas.reporting.rundir import RunDir, read_jsonl

PAYLOAD = {"phase": "search", "round": 1, "state": {"w": torch.ones(2)},
           "strategy": {"generator": torch.Generator().get_state(),
                        "rng": np.random.default_rng(0).bit_generator.state},
           "metrics_count": 1}


def test_checkpoint_round_trips_weights_only_and_leaves_no_temp(tmp_path):
    save_checkpoint(tmp_path, PAYLOAD)
    ck = load_checkpoint(tmp_path)
    assert torch.equal(ck["state"]["w"], torch.ones(2))
    assert ck["strategy"]["rng"] == PAYLOAD["strategy"]["rng"]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["latest.pt"]


class _Payload:
    """Unpickling this would run code: it touches a file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    marker = tmp_path / "pwned"
    with open(tmp_path / LATEST, "wb") as fh:
        pickle.dump({**PAYLOAD, "strategy": _Payload(marker)}, fh, protocol=2)
    with pytest.raises(CheckpointError, match="refusing checkpoint .*tensors and plain data"):
        load_checkpoint(tmp_path)
    assert not marker.exists()


def test_a_corrupt_checkpoint_is_named(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / LATEST).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="latest.pt"):
        load_checkpoint(tmp_path)


def test_config_fingerprint_ignores_only_resumable_keys(tmp_path):
    cfg = {"seed": 0, "runtime": {"progress": True, "plugins": ()},
           "federation": {"node-wait": 5, "rounds": 2, "client-cpus": 1.0}}
    base = config_fingerprint(cfg)
    assert set(base) == {"seed", "runtime.plugins", "federation.rounds"}
    assert "runtime.progress" in RESUMABLE and "runtime.plugins" not in RESUMABLE
    edited = json.loads(json.dumps(cfg))
    edited["runtime"]["progress"] = False
    edited["federation"].update({"node-wait": 60, "rounds": 3})
    assert changed_keys(base, config_fingerprint(edited)) == ["federation.rounds"]
    ck = {"fingerprint": {"config": base}}
    with pytest.raises(CheckpointError, match=r"federation\.rounds \(2 → 3\)"):
        verify_config(ck, config_fingerprint(edited), tmp_path)
    assert verify_config(ck, base, tmp_path) is True
    assert verify_config({}, base, tmp_path) is False  # an older checkpoint: nothing to check


class _Data:
    def __init__(self, flip: bool = False):
        self.name, self.input_shape, self.num_classes = "digits", (1, 8, 8), 10
        for s, n in (("train", 6), ("val", 2), ("test", 3)):
            setattr(self, f"{s}_x", torch.arange(n * 64, dtype=torch.float32).view(n, 1, 8, 8))
            setattr(self, f"{s}_y", torch.arange(n) % 10)
        if flip:
            self.train_y = self.train_y.clone()
            self.train_y[0] = 9


def test_data_fingerprint_sees_one_changed_label_and_other_partitions(tmp_path):
    parts = [np.array([0, 1, 2]), np.array([3, 4, 5])]
    base = data_fingerprint(_Data(), parts)
    assert base == data_fingerprint(_Data(), [p.copy() for p in parts])
    ck = {"fingerprint": {"data": base}}
    with pytest.raises(CheckpointError, match="differ from the checkpoint's in content"):
        verify_data(ck, data_fingerprint(_Data(flip=True), parts), tmp_path)
    with pytest.raises(CheckpointError, match="in partitions"):
        verify_data(ck, data_fingerprint(_Data(), [parts[1], parts[0]]), tmp_path)


def test_torn_last_line_is_dropped_but_a_bad_middle_line_is_an_error(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b"')
    with pytest.warns(UserWarning, match="torn last line"):
        assert read_jsonl(path, torn_ok=True) == [{"a": 1}, {"a": 2}]
    with pytest.raises(CheckpointError, match="line 3"):
        read_jsonl(path)
    path.write_text('{"a": 1}\n{"a"\n{"a": 3}\n')
    with pytest.raises(CheckpointError, match="line 2: not valid JSON"):
        read_jsonl(path, torn_ok=True)


def test_reopened_run_dir_counts_and_truncates_side_logs(tmp_path):
    run = RunDir(tmp_path, "r")
    (run.path / "config.toml").write_text("")
    run.append_jsonl("clients.jsonl", [{"i": 0}, {"i": 1}])
    assert run.side_counts == {"clients.jsonl": 2}
    run.append_jsonl("clients.jsonl", [{"i": 2}])
    with (run.path / "clients.jsonl").open("a") as fh:
        fh.write('{"i": 3')
    with pytest.warns(UserWarning):
        again = RunDir.reopen(run.path)
    assert again.side_counts == {"clients.jsonl": 3}
    again.truncate_side_logs({"clients.jsonl": 2})
    assert read_jsonl(run.path / "clients.jsonl") == [{"i": 0}, {"i": 1}]
    assert sorted(p.name for p in run.path.iterdir()) == ["clients.jsonl", "config.toml",
                                                          "plots"]


def test_keys_added_after_the_checkpoint_pass_at_their_defaults(tmp_path):
    """A checkpoint from before a key existed resumes while the key keeps its default."""
    from fednas.config.run_config import RunConfig
    from fednas.config.tools import to_dict

    now = config_fingerprint(to_dict(RunConfig()))
    older = {k: v for k, v in now.items() if not k.startswith("devices.")}
    assert older != now and verify_config({"fingerprint": {"config": older}}, now, tmp_path)
    moved = {**now, "devices.seed": 3}
    with pytest.raises(CheckpointError, match=r"devices\.seed \('<absent>' → 3\)"):
        verify_config({"fingerprint": {"config": older}}, moved, tmp_path)
    assert changed_keys(older, now) == sorted(set(now) - set(older))  # without defaults
