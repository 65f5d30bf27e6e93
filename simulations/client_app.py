"""The fednas ClientApp (Flower Message API): routes for search, training and evaluation.

Routes
------
``query``         reply with this node's partition id (the server's handshake)
``train.search``  local bi-level search on the supernet shard in the message
``train``         local training of a fixed model (derived subnet or baseline): FedAvg
``evaluate``      loss/accuracy of a fixed model on the client's val split
``train.cohort``  several virtual clients in one message (``federation.cohort-size``): the
                  global state once, each member's config; run by
                  ``fednas/federated/cohort.py`` (fixed models vectorised), one reply;
                  ``evaluate.cohort`` the same for federated evaluation
``train.dap``     DAP's gate steps with the weights frozen (``compression.dap-rounds``); only
                  the gate logits come back
``train.meta``    a federated Reptile round of the meta phase on the client's own share of the
                  meta-train classes (``fednas/meta/fedmeta_client.py``)
``query.secagg_advertise``, ``query.secagg_share``, ``train.secagg``, ``query.secagg_unmask``
                  a training round under secure aggregation (``simulations/secagg_client.py``)

The scenario comes from the ``make_client_app(cfg)`` closure (``fednas run``: the app is
shipped to Ray workers by value) or, under ``flwr run .``, from the run config.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fednas.config.run_config import RunConfig
from fednas.data.run_data import run_dataset
from fednas.federated import client
from fednas.federated.codec import to_record, to_state_dict
from fednas.federated.cohort import Outcome, clipped_presum, presum, run_cohort
from fednas.federated.shards import decode_masks
from fednas.meta.setup import meta_setup
from fednas.plugins import import_plugins
from simulations import secagg_client as secagg_flow
from simulations.local_dp import make_local_dp_mod
from simulations.quiet import quiet_flower


def client_setup(cfg: RunConfig) -> client.ClientSetup:
    """The sections of ``cfg`` that client work reads."""
    return client.ClientSetup(seed=cfg.seed, partition=cfg.partition, space=cfg.space,
                              search=cfg.search, retrain=cfg.retrain, baseline=cfg.baseline,
                              federation=cfg.federation,
                              eval_batch_size=cfg.runtime.eval_batch_size)


def cohort_reply(outcomes: list[Outcome], presummed: bool,
                 global_state: dict[str, torch.Tensor] | None = None,
                 clip_norm: float = 0.0) -> RecordDict:
    """The reply to a cohort message (wire format: strategies/cohorts.py): per member its
    metrics (``metrics.<i>``) and, unless pre-summed, its arrays (``arrays.<i>``); failed
    members in ``errors``; a pre-summed cohort's update in ``arrays.mean`` with its weight and
    lead member in ``presum``: the members' weighted mean, or with ``clip_norm`` > 0
    (central DP) the sum of their deltas from ``global_state`` clipped to ``clip_norm``,
    with the member count as weight and the norms before clipping."""
    content = RecordDict()
    errors = ConfigRecord()
    used: list[int] = []
    if presummed and clip_norm > 0:
        if global_state is None:
            raise ValueError("a clipped pre-sum needs the global state")
        total, norms, used = clipped_presum(outcomes, global_state, clip_norm)
        if used:
            content["arrays.mean"] = to_record(total)
            content["presum"] = ConfigRecord({"partition-id": used[0],
                                              "weight": float(len(used)), "clipped": 1,
                                              "norms": norms})
    elif presummed:
        mean, weight, used = presum(outcomes)
        if used:
            content["arrays.mean"] = to_record(mean)
            content["presum"] = ConfigRecord({"partition-id": used[0], "weight": weight})
    for i, o in enumerate(outcomes):
        if o.error:
            errors[str(o.pid)] = o.error
            continue
        metrics = dict(o.metrics)
        if presummed and o.reportable() and o.pid not in used:  # non-finite weights
            metrics["diverged"] = 1
        content[f"metrics.{i}"] = MetricRecord(metrics)
        if o.state and not presummed:
            content[f"arrays.{i}"] = to_record(o.state)
    content["errors"] = errors
    return content


@lru_cache(maxsize=2)
def local_clients(cfg: RunConfig) -> client.LocalClients:
    """This process's clients of scenario ``cfg`` (dataset and partitions loaded once)."""
    return client.LocalClients(client_setup(cfg),
                               lambda: run_dataset(cfg.data, cfg.seed, meta_setup(cfg),
                                                   cfg.partition.group_by()))


class BoundClientApp(ClientApp):
    """The ClientApp of one scenario, which pickles as "the app of this scenario".

    Flower's simulation engine ships the ClientApp to a Ray worker with every message
    (cloudpickle of its loader closure: 18 kB and 2.3 ms of server CPU per message for this
    app's routes). Pickled as ``(bound_client_app, (cfg,))`` it costs the 4 kB scenario
    (0.08 ms), and a worker builds the app once and reuses it (:func:`bound_client_app`).
    """

    cfg: RunConfig

    def __reduce__(self) -> tuple[Any, tuple[RunConfig]]:
        return bound_client_app, (self.cfg,)


@lru_cache(maxsize=2)
def bound_client_app(cfg: RunConfig) -> ClientApp:
    """This process's ClientApp of scenario ``cfg`` (built once)."""
    return make_client_app(cfg)


def make_client_app(cfg: RunConfig | None = None) -> ClientApp:
    """A ClientApp bound to ``cfg`` (None: read the scenario from the Flower run config)."""
    app = ClientApp() if cfg is None else BoundClientApp()
    if cfg is not None:
        app.cfg = cfg

    def resolve(context: Context) -> RunConfig:
        if cfg is None:
            from simulations.runconfig import config_from_run_config

            return config_from_run_config(context.run_config)  # imports its plugins
        import_plugins(cfg.runtime.plugins)  # this worker's registries learn the plugins'
        return cfg

    def threads(run_cfg: RunConfig) -> None:
        torch.set_num_threads(max(1, int(run_cfg.federation.client_cpus)))
        quiet_flower()  # in the actor's process: its shutdown notice (simulations/quiet.py)

    @app.query()
    def query(msg: Message, context: Context) -> Message:
        quiet_flower()
        pid = int(context.node_config.get("partition-id", -1))
        return Message(RecordDict({"metrics": MetricRecord({"partition-id": pid})}),
                       reply_to=msg)

    local_dp = [make_local_dp_mod(resolve)]

    @app.train("search", mods=local_dp)
    def search(msg: Message, context: Context) -> Message:
        run_cfg = resolve(context)
        threads(run_cfg)
        conf = msg.content["config"]
        regions = to_state_dict(msg.content["arrays"])
        clients = local_clients(run_cfg)
        masks = decode_masks(list(conf["shard"]), list(clients.arch_shapes))
        out, metrics = clients.search(int(conf["partition-id"]), int(conf["server-round"]),
                                      regions, masks, dict(conf))
        return Message(RecordDict({"arrays": to_record(out),
                                   "metrics": MetricRecord(metrics)}), reply_to=msg)

    @app.train(mods=local_dp)
    def train(msg: Message, context: Context) -> Message:
        run_cfg = resolve(context)
        threads(run_cfg)
        conf = msg.content["config"]
        out, metrics = local_clients(run_cfg).train(
            int(conf["partition-id"]), int(conf["server-round"]),
            to_state_dict(msg.content["arrays"]), client.decode_spec(str(conf["model"])),
            dict(conf))
        return Message(RecordDict({"arrays": to_record(out),
                                   "metrics": MetricRecord(metrics)}), reply_to=msg)

    @app.train("dap")
    def dap(msg: Message, context: Context) -> Message:
        run_cfg = resolve(context)
        threads(run_cfg)
        conf = msg.content["config"]
        out, metrics = local_clients(run_cfg).dap_gates(
            int(conf["partition-id"]), int(conf["server-round"]),
            to_state_dict(msg.content["arrays"]), client.decode_spec(str(conf["model"])),
            dict(conf))
        return Message(RecordDict({"arrays": to_record(out),
                                   "metrics": MetricRecord(metrics)}), reply_to=msg)

    def run_members(msg: Message, context: Context) -> Message:
        run_cfg = resolve(context)
        threads(run_cfg)
        conf = msg.content["config"]
        members = [dict(msg.content[f"member.{i}"]) for i in range(int(conf["cohort-size"]))]
        state = to_state_dict(msg.content["arrays"])
        route = str(conf["cohort-route"])
        if route == "train.meta":  # federated Reptile's meta clients
            from fednas.meta.fedmeta_client import cohort_updates

            outcomes = cohort_updates(meta_setup(run_cfg), state, members)
        else:
            outcomes = run_cohort(local_clients(run_cfg), route, state, members)
        return Message(cohort_reply(outcomes, bool(conf["cohort-presum"]), state,
                                    float(conf.get("cohort-clip", 0.0))), reply_to=msg)

    app.train("cohort")(run_members)
    app.evaluate("cohort")(run_members)

    @app.train("meta")
    def meta(msg: Message, context: Context) -> Message:
        from fednas.meta.fedmeta_client import local_update

        run_cfg = resolve(context)
        threads(run_cfg)
        conf = msg.content["config"]
        out, metrics = local_update(meta_setup(run_cfg), int(conf["partition-id"]),
                                    to_state_dict(msg.content["arrays"]), dict(conf))
        return Message(RecordDict({"arrays": to_record(out),
                                   "metrics": MetricRecord(metrics)}), reply_to=msg)

    @app.query("secagg_advertise")
    def secagg_advertise(msg: Message, context: Context) -> Message:
        return Message(secagg_flow.advertise(msg.content, context.state), reply_to=msg)

    @app.query("secagg_share")
    def secagg_share(msg: Message, context: Context) -> Message:
        return Message(secagg_flow.share_keys(msg.content, context.state), reply_to=msg)

    @app.train("secagg")
    def secagg_train(msg: Message, context: Context) -> Message:
        run_cfg = resolve(context)
        threads(run_cfg)

        def local(regions: dict[str, torch.Tensor], conf: dict) -> tuple[dict, dict]:
            pid, rnd = int(conf["partition-id"]), int(conf["server-round"])
            if conf["secagg-route"] == "train.search":
                masks = decode_masks(list(conf["shard"]), list(clients.arch_shapes))
                return clients.search(pid, rnd, regions, masks, conf)
            return clients.train(pid, rnd, regions, client.decode_spec(str(conf["model"])), conf)

        clients = local_clients(run_cfg)
        norm = len(clients.data.train_y)  # public: every client knows N
        return Message(secagg_flow.masked_input(msg.content, context.state, local, norm),
                       reply_to=msg)

    @app.query("secagg_unmask")
    def secagg_unmask(msg: Message, context: Context) -> Message:
        return Message(secagg_flow.unmask(msg.content, context.state), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        run_cfg = resolve(context)
        threads(run_cfg)
        conf = msg.content["config"]
        metrics = local_clients(run_cfg).evaluate(int(conf["partition-id"]),
                                        to_state_dict(msg.content["arrays"]),
                                        client.decode_spec(str(conf["model"])))
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)

    return app


app = make_client_app()
