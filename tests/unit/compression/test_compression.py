"""Compression: uniform pruning, budgets of the baselines, DNA distillation, FedDF, config."""

from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fednas.compression.student import budget_limits, measured_cost, prune_cnn, pruned_width, within
from fednas.config.loading import load_config
from fednas.errors import ConfigError
from fednas.models.baselines import HandCNN
from fednas.training.distill import block_regression_loss, distill

SHAPE = (1, 8, 8)


def test_pruned_cnn_computes_the_original_with_the_weakest_units_removed():
    torch.manual_seed(0)
    full = HandCNN(input_shape=SHAPE, num_classes=5, width=6).eval()
    pruned = prune_cnn(full, 4).eval()
    # Zero the units pruning removed (smallest L1 norms): the full net then equals the pruned one.
    masked = HandCNN(input_shape=SHAPE, num_classes=5, width=6).eval()
    masked.load_state_dict(full.state_dict())
    with torch.no_grad():
        for layer, k in ((masked.features[0], 4), (masked.features[3], 8), (masked.head[1], 16)):
            norms = layer.weight.abs().flatten(1).sum(1)
            drop = torch.argsort(norms)[: len(norms) - k]
            layer.weight[drop] = 0
            layer.bias[drop] = 0
    x = torch.randn(7, *SHAPE)
    torch.testing.assert_close(pruned(x), masked(x), rtol=1e-5, atol=1e-5)
    assert measured_cost(pruned, SHAPE)[0] < measured_cost(full, SHAPE)[0]
    same = prune_cnn(full, 6).eval()
    torch.testing.assert_close(same(x), full(x))
    with pytest.raises(ValueError, match="width 7 outside 1..6"):
        prune_cnn(full, 7)


def test_pruned_width_is_the_largest_that_fits(tiny_config):
    cfg = tiny_config  # baseline.width = 4 on digits (8×8, 10 classes)
    full = measured_cost(HandCNN(input_shape=SHAPE, num_classes=10, width=4), SHAPE)
    limits = budget_limits(load_config(None, ["compression.params=0.6"]).compression, full)
    width = pruned_width(cfg.baseline.width, SHAPE, 10, limits)
    fits = measured_cost(HandCNN(input_shape=SHAPE, num_classes=10, width=width), SHAPE)
    above = measured_cost(HandCNN(input_shape=SHAPE, num_classes=10, width=width + 1), SHAPE)
    assert within(fits, limits) and not within(above, limits)
    with pytest.raises(ConfigError, match="no uniform pruning of the baseline CNN fits 10 params"):
        pruned_width(cfg.baseline.width, SHAPE, 10, (10, None))


def test_dna_distillation_pulls_student_blocks_towards_the_teachers():
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cells = torch.nn.ModuleList([torch.nn.Linear(6, 6), torch.nn.Linear(6, 6)])
            self.head = torch.nn.Linear(6, 3)

        def forward(self, x):
            for cell in self.cells:
                x = torch.tanh(cell(x))
            return self.head(x)

    teacher, student = Net(), Net()
    x = torch.randn(256, 6)

    def block_gap() -> float:
        feats = {"s": [], "t": []}
        hooks = [c.register_forward_hook(lambda _m, _i, o, k=k: feats[k].append(o))
                 for k, net in (("s", student), ("t", teacher)) for c in net.cells]
        with torch.no_grad():
            student(x), teacher(x)
        for h in hooks:
            h.remove()
        return float(block_regression_loss(feats["s"], feats["t"]))

    before = block_gap()
    stats = distill(student, teacher, x, epochs=30, lr=0.1, batch_size=64, device=torch.device(
        "cpu"), generator=torch.Generator().manual_seed(0), cosine=True,
        blocks=(list(student.cells), list(teacher.cells)), dna_weight=10.0)
    assert block_gap() < 0.3 * before
    assert stats["loss"][-1] < stats["loss"][0]
    with pytest.raises(ValueError, match="single teacher"):
        distill(student, [teacher, teacher], x, epochs=1, lr=0.1, batch_size=64,
                device=torch.device("cpu"), generator=torch.Generator(),
                blocks=([], []), dna_weight=1.0)


def test_feddf_distils_the_client_ensemble_into_the_aggregate(task_identity):
    from fednas.training.distill import ensemble_logits
    from strategies.feddf import FedDF
    from strategies.fednas import FedNAS

    torch.manual_seed(0)

    def make_model():
        return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))

    def strategy():
        base = FedNAS(None, seed=0, fraction_evaluate=0.0)
        base.node_partitions = {1001: 0, 1002: 1, 1003: 2}
        return base

    clients = [make_model() for _ in range(3)]
    start = make_model().state_dict()

    def replies(base):
        messages = list(base.configure_train(1, ArrayRecord(start), ConfigRecord({}), grid=None))
        out = []
        for msg in messages:
            pid = int(msg.content["config"]["partition-id"])
            metrics = MetricRecord({"num-examples": 10, "partition-id": pid, "diverged": 0})
            out.append(Message(RecordDict({"arrays": ArrayRecord(clients[pid].state_dict()),
                                           "metrics": metrics}), reply_to=msg))
        return out

    plain_strategy = strategy()
    plain, _ = plain_strategy.aggregate_train(1, replies(plain_strategy))
    base = strategy()
    proxy = torch.randn(512, 4)
    wrapper = FedDF(base, make_model, proxy, steps=200, lr=0.5, batch_size=64,
                    temperature=1.0, device=torch.device("cpu"), seed=0)
    arrays, metrics = wrapper.aggregate_train(1, replies(wrapper))
    assert metrics is not None and base.round_stats["feddf_teachers"] == 3
    target = ensemble_logits(clients, proxy).softmax(-1)

    def gap(record):
        model = make_model()
        model.load_state_dict(record.to_torch_state_dict())
        with torch.no_grad():
            return float((model(proxy).softmax(-1) - target).abs().mean())

    assert gap(arrays) < 0.5 * gap(plain)
    assert base.client_states == []  # not kept beyond the round


@pytest.mark.parametrize("overrides, match", [
    (['phases=["compress"]', "mode=federated"], "'compress' needs 'search'"),
    (['phases=["search", "compress"]', "mode=federated"], "compression.teacher: 'searched'"),
    (['phases=["search", "retrain", "compress"]'], "run in federated mode only"),
    (["compression.params=0"], "set at least one budget"),
    (["compression.feddf=true", "mode=federated", "privacy.mode=central"],
     "compression.feddf: FedDF distils the individual client models"),
    (["compression.selection=magic"], "compression.selection"),
    (['phases=["search", "pruned"]', "mode=federated", 'baseline.model="conv4"'],
     "baseline.model: the 'pruned' phase prunes the hand-designed CNN"),
])
def test_compression_config_errors_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_an_impossible_budget_fails_before_the_run_dir_exists(tiny_overrides, tmp_path):
    from simulations.federated import FederatedPipeline

    cfg = load_config(None, tiny_overrides + [
        "mode=federated", 'phases=["search", "compress"]', "compression.teacher=supernet",
        "compression.params=0.2"])
    pipeline = FederatedPipeline(cfg)
    with pytest.raises(ConfigError, match=r"compression.params: the budget resolves to \d+ "
                                          r"params, below the smallest model"):
        pipeline.prepare()
    assert not (tmp_path / "runs").exists()


def test_export_reloads_with_fednas_and_torch_only_and_reproduces_accuracy(tiny_overrides,
                                                                            tmp_path):
    import subprocess
    import sys

    from fednas.errors import CheckpointError, FedNASError
    from fednas.models.export import export
    from simulations.pipeline import Pipeline

    cfg = load_config(None, tiny_overrides + ["search.epochs=1", "retrain.epochs=1"])
    run_dir, summary = Pipeline(cfg).run()
    for model in ("searched", "baseline"):
        path, info = export(run_dir, model, tmp_path / f"{model}.pt")
        assert info["metrics"]["reproduced_test_acc"] == pytest.approx(
            summary["models"][model]["test_acc"], abs=1e-6)
    # A fresh interpreter without flwr/ray imported: only fednas and torch.
    code = ("import sys, fednas, torch; m = fednas.load_model(sys.argv[1]); "
            "x = torch.zeros(2, *m.fednas_info['input']['shape']); "
            "print(tuple(m(x).shape), 'flwr' in sys.modules, 'ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "searched.pt")],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["(2,", "10)", "False", "False"]
    with pytest.raises(FedNASError, match="has no model 'distilled'; it has"):
        export(run_dir, "distilled")
    (tmp_path / "junk.pt").write_text("not a model")
    with pytest.raises(CheckpointError, match="is not a readable fednas export"):
        import fednas

        fednas.load_model(tmp_path / "junk.pt")


@pytest.mark.parametrize("name", ["cell", "width"])
def test_casd_penalises_costly_candidates_where_the_student_matches(name):
    from fednas.compression.casd import block_losses, casd_step, op_costs
    from fednas.spaces.registry import build_space

    torch.manual_seed(0)
    opts = ({"channels": 4, "layers": 3, "nodes": 2, "ops": ("skip_connect", "max_pool_3x3",
                                                            "conv_3x3")}
            if name == "cell" else {"depth": 8, "base_channels": 8,
                                    "width_choices": (0.25, 0.5, 1.0)})
    space = build_space(name, input_shape=(1, 8, 8), num_classes=10, **opts)
    cfg = load_config(None, ["compression.casd-penalty=1.0", "compression.batch-size=32"])
    state = {k: v.clone() for k, v in space.state_dict().items()}
    alphas_before = [a.detach().clone() for a in space.arch_parameters()]
    proxy = (torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,)))
    full = measured_cost(space.subnet(space.genotype()), SHAPE)
    record = casd_step(space, state, (int(full[0] * 2), None), cfg.compression, cfg.retrain,
                       cfg.seed, proxy, torch.device("cpu"), cfg.runtime.eval_batch_size)
    assert len(record["casd_weight"]) == len(space.arch_parameters())
    assert all(v >= 0 for v in record["casd_block_loss"])
    assert sum(float((b - state[n]).sum()) for n, b in zip(
        [n for n, p in space.named_parameters() if "alpha" in n], alphas_before,
        strict=True)) > 0
    names = [n for n, p in space.named_parameters() if p.requires_grad and "alpha" in n]
    for key, before, cost in zip(names, alphas_before, op_costs(space), strict=True):
        drop = before - state[key]
        assert (drop >= -1e-6).all()  # only a penalty, never a bonus
        # the penalty is proportional to the candidate's cost: the costliest drops the most
        flat = drop.reshape(-1, drop.shape[-1])
        if flat.abs().sum() > 0:
            assert (flat.argmax(-1) == cost.reshape(-1, cost.shape[-1]).argmax(-1)).all()
    student = space.subnet(space.genotype())
    assert len(block_losses(student, space, proxy[0], batch_size=32,
                            device=torch.device("cpu"))) >= 2
