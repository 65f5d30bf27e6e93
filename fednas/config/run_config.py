"""The run configuration: one frozen dataclass tree loaded from a TOML scenario.

Scenario files use kebab-case keys (``[search] arch-lr = 3e-3``); Python uses snake_case.
:func:`fednas.config.loading.load_config` (``load_config(path, ["search.epochs=2"])``)
validates everything before any work: unknown keys, wrong types and out-of-range values
raise :class:`ConfigError` naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass

from fednas.config.compression import CompressionConfig, check_compression
from fednas.config.devices import DevicesConfig, check_devices
from fednas.config.faults import FaultsConfig, check_faults
from fednas.config.fedex import FedExConfig
from fednas.config.meta import MetaConfig
from fednas.config.preflight import check_config
from fednas.config.privacy import PrivacyConfig, check_alpha_clip, check_secagg
from fednas.config.random_arch import RandomConfig
from fednas.config.space import CellSpaceConfig, SpaceConfig, WidthSpaceConfig  # noqa: F401
from fednas.config.tools import option, section
from fednas.errors import ConfigError
from fednas.registry import Registry
from fednas.training.protocol import PROTOCOLS

#: The phase names a scenario may list, in the order a run walks them. The built-in ones are
#: implemented in ``simulations/phases/``; registering a phase there adds its name here.
PHASE_NAMES: Registry[str] = Registry("phase", "phases", ordered=True)
for _name in ("search", "retrain", "random", "compress", "same-size", "baseline", "pruned",
              "tiers", "heterofl", "smallest", "tier-alone", "meta"):
    PHASE_NAMES.register(_name)(_name)
DEFAULT_PHASES = ("search", "retrain", "baseline")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = option("fashion-mnist", doc="registry name, npz:PATH / folder:PATH, or "
                          "meta-train (the meta phase's meta-train classes of meta.dataset)")
    root: str = option("~/.cache/fednas", doc="cache dir for downloads and rendered glyphs")
    val_fraction: float = option(0.1, gt=0.0, lt=1.0, doc="share of train held out as val")
    download: bool = option(True, doc="allow torchvision downloads when files are missing")
    max_train: int = option(0, ge=0, doc="subsample train to this many (0 = all)")


@dataclass(frozen=True)
class PartitionConfig:
    num_clients: int = option(10, ge=1, doc="number of simulated clients ('natural': must "
                              "equal the number of distinct ids in the training split)")
    scheme: str = option("dirichlet", choices=("iid", "dirichlet", "pathological", "natural"),
                         doc="'natural': one client per distinct id of partition.by")
    alpha: float = option(0.5, gt=0.0, doc="Dirichlet concentration (smaller = more non-IID)")
    classes_per_client: int = option(2, ge=1, doc="classes per client for 'pathological'")
    client_val_fraction: float = option(0.2, gt=0.0, lt=1.0, doc="each client's val split")
    min_partition_size: int = option(10, ge=1, doc="Dirichlet resamples below this size")
    by: str = option("", doc="'natural': the per-sample client id field (glyphs: font, "
                     "femnist: writer_id, parquet:/hf-disk: a column); '' = the dataset's "
                     "own (parquet/hf-disk: writer_id, client_id, user_id or font)")

    def group_by(self) -> str | None:
        """The id field the data must carry (``""``: its own), None unless 'natural'."""
        return self.by if self.scheme == "natural" else None


@dataclass(frozen=True)
class SearchConfig:
    epochs: int = option(1, ge=0, doc="passes over the train split")
    steps_per_epoch: int = option(0, ge=0, doc="cap on steps per epoch (0 = full pass)")
    batch_size: int = option(64, ge=1)
    lr: float = option(0.05, gt=0.0, doc="weight SGD lr (cosine-annealed)")
    lr_min: float = option(1e-3, ge=0.0)
    momentum: float = option(0.9, ge=0.0, lt=1.0)
    weight_decay: float = option(3e-4, ge=0.0)
    arch_lr: float = option(3e-3, gt=0.0, doc="α Adam lr")
    arch_lr_schedule: str = option("constant", choices=("constant", "cosine"),
                                   doc="α lr over the search: constant, or cosine from arch-lr "
                                       "to arch-lr-min (per federated round or per epoch)")
    arch_lr_min: float = option(0.0, ge=0.0, doc="cosine arch-lr-schedule: the last lr")
    arch_weight_decay: float = option(1e-3, ge=0.0)
    grad_clip: float = option(5.0, gt=0.0, doc="L2 bound of the weight gradients",
                              inf="no clipping")
    warmup_epochs: float = option(0.0, ge=0.0, doc="weight-only epochs before α updates")
    sandwich: bool = option(False, doc="width space: sandwich-rule weight steps (largest, "
                            "smallest and random widths, in-place distillation)")
    sandwich_samples: int = option(2, ge=0, doc="random widths per sandwich step")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = option(3, ge=0)
    batch_size: int = option(128, ge=1)
    optimizer: str = option("sgd", choices=("sgd", "adam"))
    lr: float = option(0.05, gt=0.0)
    momentum: float = option(0.9, ge=0.0, lt=1.0)
    weight_decay: float = option(3e-4, ge=0.0)
    schedule: str = option("cosine", choices=("cosine", "constant", "onecycle"))
    grad_clip: float = option(5.0, gt=0.0, doc="L2 bound of the weight gradients",
                              inf="no clipping")
    label_smoothing: float = option(0.0, ge=0.0, lt=1.0)
    inherit_weights: bool = option(True, doc="start from the supernet's weights (not the "
                                   "cell ops under space.cell.partial-channels > 1)")
    channels: int = option(0, ge=0, doc="cell space: retrain width (0 = search width)")
    layers: int = option(0, ge=0, doc="cell space: retrain depth (0 = search depth)")
    protocol: str = option("equal-total", choices=PROTOCOLS,
                           doc="how the compared models (retrain, random, baseline) train "
                               "(fednas/training/protocol.py): equal-total (a model starting "
                               "fresh trains the search's rounds + subnet-rounds, one "
                               "inheriting the supernet's weights subnet-rounds), scratch "
                               "(every model fresh, subnet-rounds: DARTS's protocol) or "
                               "subnet-only (every model subnet-rounds: earlier fednas; unfair "
                               "to the fresh baseline)")


@dataclass(frozen=True)
class BaselineConfig:
    model: str = option("cnn", choices=("cnn", "conv4"),
                        doc="hand-designed baseline: cnn, or conv4 (MAML's Conv-4; the meta "
                            "phase's 'conv4-pretrained' starts from it)")
    width: int = option(32, ge=1, doc="cnn: channels of the first conv (conv w, conv 2w, fc "
                                      "4w); conv4: channels of every conv")


@dataclass(frozen=True)
class FederationConfig:
    rounds: int = option(4, ge=1, doc="federated search rounds")
    fraction_train: float = option(1.0, gt=0.0, le=1.0, doc="clients sampled per round")
    min_fit_clients: int = option(2, ge=1, doc="a round fails below this many successes")
    local_epochs: int = option(1, ge=1, doc="local passes per round (search and training)")
    local_steps: int = option(0, ge=0, doc="cap on local search steps per epoch (0 = full)")
    warmup_rounds: int = option(0, ge=0, doc="search rounds at the start in which clients "
                                "train only the supernet's weights (α frozen): α is then "
                                "learned on trained weights (DARTS-style warm-up)")
    shard_size: int = option(0, ge=0, doc="candidates per edge/layer a client trains "
                                          "(0 = all: plain FedNAS); at most the space's "
                                          "candidates (space.cell.ops, "
                                          "space.width.width-choices): a larger value is "
                                          "an error")
    include_argmax: bool = option(True, doc="shards always hold the current best candidate")
    subnet_rounds: int = option(4, ge=0, doc="FedAvg rounds for the derived subnet and the "
                                             "hand-designed baseline")
    strategy: str = option("fednas", doc="the server strategy by its registered name "
                           "(strategies/registry.py): fednas, or one registered by a plugin")
    server_lr: float = option(1.0, gt=0.0, doc="server step on the averaged update "
                              "(FedAvgM; 1 with momentum 0 = FedAvg)")
    server_momentum: float = option(0.0, ge=0.0, lt=1.0, doc="server momentum (FedAvgM)")
    ema_decay: float = option(0.0, ge=0.0, lt=1.0, doc="fixed-model training reports and "
                              "exports an exponential moving average of the global model "
                              "over rounds with this decay (fednas/federated/ema.py; "
                              "0 = last iterate)")
    fraction_evaluate: float = option(1.0, ge=0.0, le=1.0, doc="clients evaluating the "
                                      "trained subnet per round (0 = server-side only)")
    server_eval_samples: int = option(0, ge=0, doc="test samples for per-round server "
                                      "evaluation (0 = whole test split)")
    bn_calibration_samples: int = option(500, ge=0, doc="server-side val images used to "
                                         "recalibrate BN of the argmax subnet before its "
                                         "per-round evaluation (0 = off)")
    bn_stats: str = option("clients", choices=("clients", "server"),
                           doc="fixed-model training: BN running statistics averaged from the "
                               "clients, or recalibrated every round on the server's "
                               "bn-calibration-samples val images (central DP: always server)")
    cohort_size: int = option(1, ge=0, doc="fednas run/sweep: virtual clients per message; "
                              "a worker trains a cohort's fixed models as one vectorised "
                              "computation (fednas/federated/cohort.py; equal to one by one up "
                              "to float rounding) and, when the aggregation is the plain "
                              "weighted mean, sends one pre-summed update; 1 = one client per "
                              "message; 0 = one cohort per Ray worker slot (CPUs ÷ "
                              "client-cpus); flwr run always uses 1")
    client_cpus: float = option(1.0, gt=0.0, doc="Ray CPUs per client")
    client_gpus: float = option(-1.0, ge=-1.0, doc="Ray GPUs per client (-1 = 0.5 when "
                                "CUDA is visible, else 0)")
    ray_address: str = option("", doc="attach to this Ray cluster (empty = local)")
    round_timeout: float = option(1800.0, gt=0.0, doc="seconds to wait for replies",
                                  inf="wait until every reply is in")
    checkpoint_every: int = option(1, ge=0, doc="checkpoint every N rounds (0 = never)")
    node_wait: float = option(120.0, gt=0.0, doc="seconds to wait for all nodes to register",
                              inf="wait until they have")
    faults: FaultsConfig = section(FaultsConfig)
    fault_partitions: tuple[int, ...] = option((), ge=0, doc="fault injection: these "
                                               "partitions fail every training round")
    fault_kind: str = option("raise", choices=("raise", "nan"),
                             doc="how injected faults fail: raise an error or return NaN")


@dataclass(frozen=True)
class RuntimeConfig:
    device: str = option("auto", doc="auto, cpu, cuda or cuda:N")
    threads: int = option(0, ge=0, doc="torch CPU threads (0 = all cores)")
    out_dir: str = option("runs", doc="where run directories are created")
    progress: bool = option(True, doc="rich progress bars")
    eval_batch_size: int = option(1000, ge=1)
    plugins: tuple[str, ...] = option((), doc="Python files (.py) or modules imported before "
                                      "the scenario is checked and on every client: they "
                                      "register search spaces, datasets, strategies or phases "
                                      "(docs/extending.md)")
    message_pump: str = option("fednas", choices=("fednas", "flower"),
                               doc="federated runs under fednas run/sweep: how Flower's "
                                   "simulation engine hands the server's messages to the nodes; "
                                   "fednas: one pass over the stored messages per sweep "
                                   "(simulations/flower_pump.py); flower: Flower's own, nodes × "
                                   "messages per sweep (slow with 1000+ nodes; what flwr run "
                                   "always uses)")

    def check(self) -> None:
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"runtime.device: {self.device!r} is not allowed; allowed "
                              "values: auto, cpu, cuda, cuda:N")


@dataclass(frozen=True)
class RunConfig:
    name: str = option("fednas", doc="run name (prefix of the run dir)")
    seed: int = option(0, ge=0)
    mode: str = option("centralised", choices=("centralised", "federated"),
                       doc="one process, or Flower clients on Ray")
    phases: tuple[str, ...] = option(DEFAULT_PHASES, subset_of=PHASE_NAMES,
                                     doc="phases to run (always in the order search, retrain, "
                                         "random, compress, same-size, baseline, pruned, "
                                         "meta); random = a random architecture of the "
                                         "space, trained like the searched one; compress, "
                                         "same-size, pruned: see [compression]")
    data: DataConfig = section(DataConfig)
    partition: PartitionConfig = section(PartitionConfig)
    space: SpaceConfig = section(SpaceConfig)
    search: SearchConfig = section(SearchConfig)
    retrain: TrainConfig = section(TrainConfig)
    baseline: BaselineConfig = section(BaselineConfig)
    random: RandomConfig = section(RandomConfig)
    federation: FederationConfig = section(FederationConfig)
    fedex: FedExConfig = section(FedExConfig)
    privacy: PrivacyConfig = section(PrivacyConfig)
    meta: MetaConfig = section(MetaConfig)
    compression: CompressionConfig = section(CompressionConfig)
    devices: DevicesConfig = section(DevicesConfig)
    runtime: RuntimeConfig = section(RuntimeConfig)

    def server_bn_reason(self) -> str:
        """Why the server recalibrates BN statistics on its val images ('' when clients' do).

        Central DP always does: the clients' running statistics are not clipped or noised.
        """
        if self.federation.bn_stats == "server":
            return 'federation.bn-stats = "server"'
        if self.privacy.mode == "central":
            return 'privacy.mode = "central" (client BN statistics are not noised)'
        return ""

    def check(self) -> None:
        f = self.federation
        if self.fedex.enabled and self.mode != "federated":
            raise ConfigError("fedex.enabled: FedEx tunes federated clients; set "
                              'mode = "federated"')
        bad = [p for p in f.fault_partitions if p >= self.partition.num_clients]
        if bad:
            raise ConfigError(f"federation.fault-partitions: {bad} outside 0.."
                              f"{self.partition.num_clients - 1}")
        check_faults(f.faults, f.round_timeout)
        check_devices(self)
        if self.mode == "federated" and f.min_fit_clients > self.partition.num_clients:
            raise ConfigError(f"federation.min-fit-clients: {f.min_fit_clients} exceeds "
                              f"partition.num-clients = {self.partition.num_clients}")
        if self.privacy.mode != "off" and self.mode != "federated":
            raise ConfigError("privacy.mode: differential privacy protects federated clients; "
                              'set mode = "federated"')
        if self.privacy.secure_aggregation:
            check_secagg(self)
        if f.cohort_size != 1 and self.privacy.mode == "local":
            raise ConfigError("federation.cohort-size: local DP (privacy.mode = \"local\") "
                              "clips and noises each client's reply in a Flower mod; set "
                              "cohort-size = 1")
        if self.privacy.alpha_clip_norm:
            check_alpha_clip(self)
        server_bn = self.server_bn_reason()
        if server_bn and self.mode == "federated" and f.bn_calibration_samples == 0:
            raise ConfigError(f"federation.bn-calibration-samples: {server_bn} recalibrates "
                              "BN on the server's val images; set it > 0")
        if "retrain" in self.phases and "search" not in self.phases:
            raise ConfigError("phases: 'retrain' needs 'search' (it retrains the searched subnet)")
        if "random" in self.phases and "search" not in self.phases:
            raise ConfigError("phases: 'random' needs 'search' (the random architecture gets "
                              "the searched subnet's treatment: same supernet, same budget)")
        check_compression(self)
        if self.search.sandwich and self.space.name != "width":
            raise ConfigError("search.sandwich: the sandwich rule trains several widths of "
                              'shared weights; it needs space.name = "width"')
        self.meta.check_run(self)
        federated_only = {"compress", "same-size", "pruned"} & set(self.phases)
        if federated_only and self.mode != "federated":
            raise ConfigError(f"phases: {sorted(federated_only)} run in federated mode only; "
                              'set mode = "federated"')
        if not self.name or "/" in self.name:
            raise ConfigError(f"name: must be a non-empty name without '/' (got {self.name!r})")
        check_config(self)  # candidate ops, shard size (fednas/config/preflight.py)
