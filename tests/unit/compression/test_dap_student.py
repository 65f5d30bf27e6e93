"""DAP as the compression phase's selection (issue 32): the student, its spec, its resume."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from fednas.compression.dap_gates import measure
from fednas.compression.dap_student import block_widths, dap_student, rebuild_student
from fednas.config.compression import CompressionConfig
from fednas.config.loading import load_config
from fednas.errors import ConfigError
from fednas.federated.setup import build_fixed_model
from fednas.models.export import build
from fednas.models.flops import count_flops, count_params
from fednas.spaces.registry import build_space

SHAPE = (1, 8, 8)
CPU = torch.device("cpu")
C = CompressionConfig(selection="dap", dap_steps=40, batch_size=32)


@pytest.fixture(scope="module")
def space_and_proxy():
    torch.manual_seed(0)
    space = build_space("width", input_shape=SHAPE, num_classes=4, depth=8,
                        base_channels=8, width_choices=(0.5, 1.0))
    templates = torch.randn(4, *SHAPE)
    y = torch.randint(4, (96,))
    return space, (templates[y] + 0.5 * torch.randn(96, *SHAPE), y)


def test_student_meets_the_budget_and_records_what_it_kept(space_and_proxy):
    space, proxy = space_and_proxy
    full = measure(space.subnet(space.max_genotype()), SHAPE)
    limits = (int(0.6 * full[0]), None)
    before = {k: v.clone() for k, v in space.state_dict().items()}
    student, record = dap_student(space, limits, C, proxy, seed=3, device=CPU)
    assert all(torch.equal(before[k], v) for k, v in space.state_dict().items())  # untouched
    params, flops = count_params(student), count_flops(student, SHAPE)
    assert (record["params"], record["flops"]) == (params, flops) and params <= limits[0]
    assert record["mids"] == block_widths(student) == [sum(k) for k in record["keep"]]
    assert record["full_params"] == full[0] and record["labels"] == "pseudo"
    assert min(record["mids"]) >= 1 and sum(record["mids"]) < sum(
        block_widths(space.subnet(space.max_genotype())))
    json.dumps(record)  # the run dir stores it as JSON


def test_student_is_seeded_and_rebuilt_exactly_from_its_record(space_and_proxy):
    space, proxy = space_and_proxy
    limits = (None, int(0.5 * measure(space.subnet(space.max_genotype()), SHAPE)[1]))
    a, rec_a = dap_student(space, limits, C, proxy, seed=1, device=CPU)
    b, rec_b = dap_student(space, limits, C, proxy, seed=1, device=CPU)
    assert rec_a["keep"] == rec_b["keep"]
    again = rebuild_student(space, json.loads(json.dumps(rec_a)), C, proxy[0], CPU)
    for model in (b, again):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                      model.state_dict().values(), strict=True))


def test_labels_from_the_proxy_when_it_is_labelled(space_and_proxy):
    space, proxy = space_and_proxy
    c = dataclasses.replace(C, use_labels=True, dap_steps=5)
    _, record = dap_student(space, (10**9, None), c, proxy, seed=0,
                            device=CPU)
    assert record["labels"] == "proxy"


def test_budget_below_one_channel_per_block_is_a_config_error(space_and_proxy):
    space, proxy = space_and_proxy
    with pytest.raises(ConfigError, match="compression.params: .* smallest network DAP"):
        dap_student(space, (100, None), C, proxy, seed=0, device=CPU)


def test_clients_and_export_build_the_pruned_resnet(tiny_overrides):
    cfg = load_config(None, tiny_overrides + [
        'space.name="width"', "space.width.depth=8", "space.width.base-channels=8"])
    from simulations.client_app import client_setup

    spec = {"kind": "pruned-resnet", "mids": [3, 5, 2]}
    model = build_fixed_model(client_setup(cfg), spec, (1, 8, 8), 10)
    assert block_widths(model) == [3, 5, 2]
    from fednas.models.export import _recipe

    rebuilt = build(json.loads(json.dumps(_recipe(cfg, spec, (1, 8, 8), 10))))
    assert [t.shape for t in rebuilt.state_dict().values()] == [
        t.shape for t in model.state_dict().values()]


@pytest.mark.parametrize("sets, match", [
    (['space.name="cell"'], "prunes the channels of width-space subnets"),
    (['space.name="width"', "compression.dna-weight=1.0"], "compression.dna-weight"),
])
def test_config_errors(tiny_overrides, sets, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, tiny_overrides + [
            "mode=federated", 'phases=["search", "compress"]', "compression.teacher=\"none\"",
            'compression.selection="dap"', *sets])


def test_gate_steps_can_be_a_slice_of_a_longer_schedule(space_and_proxy):
    """Federated gate rounds: round r's steps sit at (r - 1) · steps of the whole schedule."""
    from fednas.compression.budget import Budget
    from fednas.compression.dap import Schedule, prunable, train_gates
    from fednas.compression.dap_gates import DapGates

    space, proxy = space_and_proxy
    full = prunable(space)
    schedule = Schedule((1.0, 0.01), (1.0, 0.1))
    kwargs = dict(budget=Budget(params=0.9), device=CPU, steps=5, batch_size=16,
                  schedule=schedule)
    first = train_gates(full, DapGates(full, SHAPE), proxy, generator=torch.Generator(),
                        offset=0, total=10, **kwargs)
    last = train_gates(full, DapGates(full, SHAPE), proxy, generator=torch.Generator(),
                       offset=5, total=10, **kwargs)
    alone = train_gates(full, DapGates(full, SHAPE), proxy, generator=torch.Generator(),
                        **kwargs)
    assert first["t_prob"] == pytest.approx(schedule.at(4, 10)[0])
    assert last["t_prob"] == pytest.approx(0.01) == alone["t_prob"]
