"""retrain.protocol: rounds and weight sources of the compared models; legacy digests."""

from __future__ import annotations

import tomllib

import pytest

from fednas.config.legacy import digest_view, legacy_values
from fednas.config.loading import load_config
from fednas.config.tools import to_dict
from fednas.errors import ConfigError
from fednas.reporting.fingerprint import changed_keys, config_fingerprint
from fednas.training.protocol import Budget, comparison_budget, protocol_matters

KW = {"search_units": 3, "train_units": 4, "inherit_weights": True}


@pytest.mark.parametrize(("protocol", "phase", "expected"), [
    ("equal-total", "retrain", Budget(4, "supernet")),
    ("equal-total", "random", Budget(4, "supernet")),
    ("equal-total", "baseline", Budget(7, "none")),   # fresh: the search's 3 rounds + 4
    ("scratch", "retrain", Budget(4, "none")),
    ("scratch", "baseline", Budget(4, "none")),
    ("subnet-only", "retrain", Budget(4, "supernet")),
    ("subnet-only", "baseline", Budget(4, "none")),   # the old, unfair rule
])
def test_budget_per_protocol(protocol, phase, expected):
    assert comparison_budget(protocol, phase, **KW) == expected


def test_fresh_subnets_get_the_search_rounds_too():
    no_inherit = {**KW, "inherit_weights": False}
    assert comparison_budget("equal-total", "retrain", **no_inherit) == Budget(7, "none")
    assert comparison_budget("equal-total", "random", **KW, resized=True) == Budget(7, "none")
    assert comparison_budget("equal-total", "retrain", **KW, partial=True) == Budget(4, "partial")
    # no search in the run: nothing to inherit, nothing to make up for
    assert comparison_budget("equal-total", "baseline", search_units=0, train_units=4,
                             inherit_weights=True) == Budget(4, "none")
    with pytest.raises(ValueError, match="compress"):
        comparison_budget("equal-total", "compress", **KW)


def test_protocol_matters_only_where_a_model_trains_differently():
    assert protocol_matters("equal-total", ["search", "retrain", "baseline"], **KW)
    assert not protocol_matters("equal-total", ["search", "retrain"], **KW)  # inherits anyway
    assert protocol_matters("scratch", ["search", "retrain"], **KW)
    assert not protocol_matters("subnet-only", ["search", "retrain", "baseline"], **KW)


def test_config_key_and_its_error():
    assert load_config(None, []).retrain.protocol == "equal-total"
    with pytest.raises(ConfigError, match="retrain.protocol"):
        load_config(None, ['retrain.protocol="fair"'])


def _flat(sets):
    resolved = to_dict(load_config(None, sets))
    return resolved, config_fingerprint(resolved)


def test_digest_drops_the_key_where_earlier_records_still_hold():
    # search + retrain only (what the privacy/soak/xdevice benchmarks run): equal-total
    # changes nothing, so the digest is that of a config without the key
    resolved, flat = _flat(['phases=["search", "retrain"]'])
    assert "protocol" not in digest_view(resolved, flat)["retrain"]
    # with a fresh baseline it changes the run: kept, unless at the legacy value
    resolved, flat = _flat([])
    assert digest_view(resolved, flat)["retrain"]["protocol"] == "equal-total"
    resolved, flat = _flat(['retrain.protocol="subnet-only"'])
    assert "protocol" not in digest_view(resolved, flat)["retrain"]
    assert "protocol" in resolved["retrain"]  # the input is not modified


def test_resume_of_a_checkpoint_made_before_the_key():
    _, now = _flat([])
    saved = {k: v for k, v in now.items() if k != "retrain.protocol"}
    defaults = config_fingerprint(to_dict(load_config(None, [])))
    assert legacy_values(now)["retrain.protocol"] == "subnet-only"
    assert legacy_values(_flat(['phases=["search", "retrain"]'])[1])["retrain.protocol"] == (
        "equal-total")
    assert changed_keys(saved, now, defaults) == ["retrain.protocol"]  # would train longer
    _, legacy_now = _flat(['retrain.protocol="subnet-only"'])
    assert changed_keys(saved, legacy_now, defaults) == []
    _, inherit_only = _flat(['phases=["search", "retrain"]'])
    saved = {k: v for k, v in inherit_only.items() if k != "retrain.protocol"}
    assert changed_keys(saved, inherit_only, defaults) == []  # the same run either way


def test_a_run_dir_older_than_the_key_resumes_with_its_legacy_value(tmp_path):
    from fednas.config.legacy import legacy_overrides
    from fednas.reporting.rundir import RunDir

    cfg = load_config(None, [])
    run = RunDir(str(tmp_path), "old")
    run.write_config(cfg)
    text = (run.path / "config.toml").read_text()
    assert legacy_overrides(tomllib.loads(text)) == []  # written now: has the key
    old = "\n".join(line for line in text.splitlines() if not line.startswith("protocol"))
    sets = legacy_overrides(tomllib.loads(old))
    assert sets == ['retrain.protocol="subnet-only"']
    older = "\n".join(line for line in old.splitlines()
                      if not line.startswith(("fitness", "init =")))
    assert sorted(legacy_overrides(tomllib.loads(older))) == [
        'meta.atnas.fitness="accuracy"', 'meta.atnas.init="search"',
        'retrain.protocol="subnet-only"']
    (run.path / "config.toml").write_text(old)
    assert load_config(run.path / "config.toml", sets).retrain.protocol == "subnet-only"


def test_atnas_keys_count_only_where_atnas_runs():
    resolved, flat = _flat([])
    view = digest_view(resolved, flat)
    assert "fitness" not in view["meta"]["atnas"] and "init" not in view["meta"]["atnas"]
    assert legacy_values(flat)["meta.atnas.fitness"] == "loss"  # no meta phase: as it is


def test_keys_added_at_their_legacy_default_leave_digests_alone():
    resolved, flat = _flat(['phases=["search", "retrain"]'])
    view = digest_view(resolved, flat)
    assert "arch-lr-schedule" not in view["search"] and "arch-lr-min" not in view["search"]
    assert legacy_values(flat)["search.arch-lr-schedule"] == "constant"
    resolved, flat = _flat(['phases=["search", "retrain"]', 'search.arch-lr-schedule="cosine"'])
    assert digest_view(resolved, flat)["search"]["arch-lr-schedule"] == "cosine"
    assert legacy_values(flat)["search.arch-lr-schedule"] == "constant"  # a resume would differ
