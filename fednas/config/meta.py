"""The ``[meta]`` section: few-shot tasks, meta-learning and AT-NAS options of the meta phase.

Used by the phase ``meta`` (:mod:`fednas.meta.phase`): N-way K-shot tasks from class-disjoint
meta-train/val/test splits of ``meta.dataset``, every model of ``meta.models`` meta-trained
with ``meta.algorithm`` per shot count, then scored on the same seeded test tasks; with
``[meta.atnas] enabled``, AT-NAS searches a subnet per test task as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fednas.config.meta_dap import DapMetaConfig
from fednas.config.tools import option, section
from fednas.errors import ConfigError

META_MODELS = ("searched", "supernet", "conv4", "conv4-pretrained", "metanas", "dap")
META_ALGORITHMS = ("maml", "fomaml", "anil", "metasgd")
ATNAS_PRIORS = ("uniform", "metanas")
ATNAS_FITNESS = ("loss", "accuracy")
ATNAS_INITS = ("auto", "retrained", "search")


@dataclass(frozen=True)
class AtnasConfig:
    enabled: bool = option(False, doc="AT-NAS: meta-train the cell supernet over sampled "
                           "subnets, then evolve a subnet per test task (cell space)")
    iterations: int = option(0, ge=0, doc="supernet meta-training outer steps (0 = "
                             "meta.iterations: the same outer steps as each meta.models "
                             "network gets)")
    init: str = option("auto", choices=ATNAS_INITS, doc="shared weights before meta-training "
                       "(meta.init = 'searched'): search (the search's supernet.pt), "
                       "retrained (supernet.pt, then the retrained searched subnet, "
                       "searched.pt, over its ops, stem and preprocessing; an error without "
                       "one), auto (retrained when the run has searched.pt of the search's "
                       "width and depth, else search; meta.json records which)")
    eval_tasks: int = option(0, ge=0, doc="test tasks searched: the first N of the shared "
                             "list (0 = meta.eval-tasks; each costs a whole search)")
    population: int = option(8, ge=2, doc="candidates kept per generation")
    generations: int = option(4, ge=0, doc="offspring rounds after the initial population")
    tournament: int = option(3, ge=1, doc="candidates drawn per parent selection")
    crossover: float = option(0.5, ge=0.0, le=1.0, doc="chance a child mixes two parents")
    mutation: float = option(0.2, ge=0.0, le=1.0, doc="chance per gene of a new op or input")
    max_params: int = option(0, ge=0, doc="EEEA: subnets above this many parameters are "
                             "rejected before any evaluation (0 = no absolute limit)")
    params_ratio: float = option(0.0, ge=0.0, doc="EEEA limit as a multiple of the searched "
                                 "subnet's parameters (0 = off; needs 'searched' in "
                                 "meta.models); with max-params the smaller limit holds")
    holdout: int = option(1, ge=1, doc="support shots per class held out to score a "
                          "candidate (1-shot tasks score on augmented copies instead)")
    fitness: str = option("loss", choices=ATNAS_FITNESS, doc="candidate score after "
                          "adapting: loss (minus the mean cross-entropy on the held-out "
                          "shots or augmented copies) or accuracy there (saturates at 100 %)")
    augment_copies: int = option(4, ge=1, doc="1-shot fitness: augmented copies of each "
                                 "support image that the adapted candidate must classify")
    inner_steps: int = option(0, ge=0, doc="adaptation steps per candidate "
                              "(0 = meta.eval-inner-steps)")
    max_tries: int = option(50, ge=1, doc="draws per wanted candidate before giving up")
    prior: str = option("uniform", choices=ATNAS_PRIORS, doc="how subnets are drawn for "
                        "meta-training and the initial population: uniform, or metanas (α "
                        "meta-learned first as for the 'metanas' model, then softmax(α / "
                        "temperature); its mode starts the population)")
    temperature: float = option(1.0, gt=0.0, doc="prior = metanas: sampling temperature of "
                                "α (-> 0: always the mode, 1: softmax(α))")

    def check(self) -> None:
        if self.tournament > self.population:
            raise ConfigError(f"meta.atnas.tournament: must be <= meta.atnas.population = "
                              f"{self.population} (got {self.tournament})")

    def evolution_options(self) -> dict[str, Any]:
        """Keyword options of :class:`fednas.meta.atnas.EvolutionConfig` (without max-params)."""
        return {k: getattr(self, k) for k in ("population", "generations", "tournament",
                                              "crossover", "mutation", "holdout", "max_tries",
                                              "fitness")}


@dataclass(frozen=True)
class MetanasConfig:
    iterations: int = option(0, ge=0, doc="'metanas' model: outer steps that meta-learn the "
                             "supernet's weights and α before its subnet is derived "
                             "(0 = meta.iterations); the subnet then gets meta.iterations")
    arch_lr: float = option(1e-2, gt=0.0, doc="'metanas' model: Adam lr of α in the outer "
                            "loop (glyphs 1-shot meta-val: 1e-2 beat 3e-3 by 2.5 points)")


@dataclass(frozen=True)
class MetaConfig:
    dataset: str = option("glyphs", doc="few-shot dataset: glyphs (rendered offline), "
                          "omniglot, mini-imagenet, cifar-fs (with official class splits), or "
                          "any data.dataset name (its classes, not samples, are split)")
    root: str = option("", doc="data dir ('' = data.root); downloads follow data.download")
    image_size: int = option(0, ge=0, doc="omniglot/mini-imagenet/cifar-fs: image side (0 = "
                             "28 for omniglot as in MAML, 84 mini-imagenet, 32 cifar-fs)")
    glyph_scripts: tuple[str, ...] = option((), doc="glyphs: scripts to render (empty = all)")
    glyph_letters: int = option(40, ge=1, doc="glyphs: letters per script at most")
    glyph_samples: int = option(20, ge=2, doc="glyphs: renders (font × augmentation) per "
                                "letter")
    split: tuple[float, ...] = option((0.64, 0.16, 0.2), ge=0.0, le=1.0,
                                      doc="shares of the classes in meta-train/val/test; with "
                                          "split-by = official only val / (train + val) is "
                                          "used: the share of Omniglot's background "
                                          "characters carved out as meta-val alphabets")
    split_by: str = option("script", choices=("class", "script", "official"),
                           doc="script: whole glyph scripts per part, so test scripts are "
                               "unseen (glyphs only); class: classes split at random; "
                               "official: the dataset's own split (omniglot: background / "
                               "evaluation alphabets; mini-imagenet: its 3 files; cifar-fs: "
                               "Bertinetto et al.)")
    models: tuple[str, ...] = option(("searched", "conv4"), subset_of=META_MODELS,
                                     doc="models meta-trained and compared: the searched "
                                         "subnet, the whole supernet (α fixed), Conv-4 "
                                         "from scratch, conv4-pretrained (Conv-4 from the "
                                         "run's baseline phase, baseline.model = 'conv4': "
                                         "the same federated pretraining as the subnet), "
                                         "metanas (α meta-learned on the tasks, then the "
                                         "derived subnet: [meta.metanas]), dap (a trained "
                                         "network pruned by DAP on the meta-train classes: "
                                         "[meta.dap])")
    init: str = option("searched", choices=("searched", "scratch"),
                       doc="searched/supernet: start from the run's trained weights where "
                           "shapes match (the ways-class head is always new), or from scratch")
    stem_stride: int = option(0, choices=(0, 1, 2), doc="stem stride of the networks the meta "
                              "phase builds from the search space (searched, supernet, "
                              "metanas, AT-NAS); 0 = the search's space.*.stem-stride, 1 = the "
                              "first cell sees 28×28 glyphs at full resolution")
    conv4_hidden: int = option(64, ge=0, doc="Conv-4 channels (64 = the MAML baseline; 0 = "
                               "the width whose params come closest to the searched subnet's)")
    algorithm: str = option("maml", choices=META_ALGORITHMS,
                            doc="maml (second order), fomaml, anil (head only), metasgd")
    ways: int = option(5, ge=2, doc="classes per task")
    shots: tuple[int, ...] = option((1, 5), ge=1, doc="support samples per class; each "
                                    "count is meta-trained and evaluated separately")
    queries: int = option(15, ge=1, doc="query samples per class")
    meta_batch: int = option(4, ge=1, doc="tasks per outer step")
    inner_steps: int = option(1, ge=1, doc="adaptation steps during meta-training")
    inner_lr: float = option(0.1, gt=0.0, doc="adaptation step size (MetaSGD: initial); "
                             "on glyphs 0.1 trains Conv-4, MAML's 0.4 does not")
    outer_lr: float = option(3e-3, gt=0.0, doc="Adam lr of the outer loop")
    iterations: int = option(200, ge=0, doc="outer steps per model and shot count")
    eval_tasks: int = option(600, ge=1, doc="seeded test tasks, the same for every model")
    eval_inner_steps: int = option(5, ge=0, doc="adaptation steps on a test task's support")
    eval_split: str = option("test", choices=("test", "val"),
                             doc="classes the scored tasks come from: test (results) or val "
                                 "(model selection, e.g. a sweep over meta.inner-lr)")
    clients: int = option(0, ge=0, doc="federated meta-learning: > 0 clients hold disjoint "
                          "shares of the meta-train classes and the models are meta-trained "
                          "by federated Reptile (FedAvg of Reptile steps; AT-NAS stays "
                          "central); in a federated run as Flower rounds on the nodes of "
                          "partitions 0..clients-1 (<= partition.num-clients), else "
                          "in-process; 0 = the server meta-trains with meta.algorithm")
    local_steps: int = option(5, ge=1, doc="federated Reptile: SGD steps per task on its "
                              "support + query (lr meta.inner-lr)")
    server_lr: float = option(1.0, gt=0.0, doc="federated Reptile: server step ε on the "
                              "plain mean of the client displacements (every client runs "
                              "meta-batch tasks per round)")
    seed_offset: int = option(0, ge=0, doc="the split and task seeds are seed + seed-offset")
    log_every: int = option(10, ge=1, doc="outer steps per metrics.jsonl record")
    atnas: AtnasConfig = section(AtnasConfig)
    metanas: MetanasConfig = section(MetanasConfig)
    dap: DapMetaConfig = section(DapMetaConfig)

    def check(self) -> None:
        if len(self.split) != 3 or abs(sum(self.split) - 1.0) > 1e-6:
            raise ConfigError(f"meta.split: three shares (train, val, test) summing to 1 "
                              f"(got {list(self.split)})")
        if self.split[0] == 0 or self.split[2] == 0:
            raise ConfigError("meta.split: train and test need a positive share")
        if self.glyph_scripts:
            from fednas.data.glyphs import SCRIPTS

            unknown = sorted(set(self.glyph_scripts) - {name for name, _ in SCRIPTS})
            if unknown:
                raise ConfigError(f"meta.glyph-scripts: {unknown} unknown; allowed values: "
                                  f"{sorted(name for name, _ in SCRIPTS)}")
        from fednas.data.fewshot import OFFICIAL_DATASETS

        official = self.dataset in OFFICIAL_DATASETS
        if self.split_by == "script" and self.dataset != "glyphs":
            raise ConfigError(f"meta.split-by: 'script' needs meta.dataset = 'glyphs' "
                              f"(got {self.dataset!r}); use "
                              + ("'official' or 'class'" if official else "'class'"))
        if self.split_by == "official" and not official:
            raise ConfigError(f"meta.split-by: 'official' needs a dataset with an official "
                              f"split ({', '.join(OFFICIAL_DATASETS)}; got {self.dataset!r}); "
                              "use " + ("'script' or 'class'" if self.dataset == "glyphs"
                                        else "'class'"))
        if self.image_size and not official:
            raise ConfigError(f"meta.image-size: resizes {', '.join(OFFICIAL_DATASETS)} only "
                              f"(got meta.dataset = {self.dataset!r}); use 0")
        if not self.models and not self.atnas.enabled:
            raise ConfigError("meta.models: empty and meta.atnas disabled: nothing to compare")
        if not self.shots or len(set(self.shots)) != len(self.shots):
            raise ConfigError(f"meta.shots: distinct shot counts needed (got {list(self.shots)})")
        if self.atnas.enabled and self.algorithm == "metasgd":
            raise ConfigError("meta.algorithm: AT-NAS supports maml, fomaml and anil (MetaSGD's "
                              "per-parameter lrs do not transfer to subnets)")
        bad = [k for k in self.shots if 1 < k <= self.atnas.holdout]
        if self.atnas.enabled and bad:
            raise ConfigError(f"meta.atnas.holdout: {self.atnas.holdout} held-out shots leave "
                              f"nothing to adapt on for shots {bad}")
        if self.conv4_hidden == 0 and "conv4" in self.models and "searched" not in self.models:
            raise ConfigError("meta.conv4-hidden: 0 matches the searched subnet's params; add "
                              "'searched' to meta.models or give a width")
        if self.clients and {"supernet", "metanas"} & set(self.models):
            raise ConfigError("meta.clients: federated Reptile would train the supernet's α "
                              "too; drop 'supernet' and 'metanas' from meta.models")
        if self.atnas.params_ratio and "searched" not in self.models:
            raise ConfigError("meta.atnas.params-ratio: needs 'searched' in meta.models")

    def check_run(self, cfg: Any) -> None:
        """Rules that involve the rest of the scenario (``cfg`` is the RunConfig)."""
        if "meta" not in cfg.phases:
            return
        needs = [m for m in self.models if m in ("searched", "supernet", "metanas")]
        if needs and "search" not in cfg.phases:
            raise ConfigError(f"meta.models: {needs} need the 'search' phase (or a run dir "
                              "that has one: fednas meta RUN_DIR); use ['conv4'] without it")
        if "conv4-pretrained" in self.models and ("baseline" not in cfg.phases
                                                  or cfg.baseline.model != "conv4"):
            raise ConfigError("meta.models: 'conv4-pretrained' starts from the run's baseline "
                              "phase; add 'baseline' to phases with baseline.model = 'conv4' "
                              f"(this run: phases {list(cfg.phases)}, baseline.model = "
                              f"{cfg.baseline.model!r})")
        if self.clients and cfg.mode == "federated":  # Flower rounds: simulations.meta_rounds
            n = cfg.partition.num_clients
            if self.clients > n:
                raise ConfigError(f"meta.clients: {self.clients} exceeds partition.num-clients "
                                  f"= {n}; meta client k is the node of partition k, so use "
                                  f"1..{n} (or 0: the server meta-trains)")
            if cfg.privacy.mode != "off" or cfg.privacy.secure_aggregation:
                raise ConfigError("meta.clients: federated Reptile rounds have no DP or secure "
                                  "aggregation; set meta.clients = 0 (the server meta-trains) "
                                  "or turn privacy.mode and privacy.secure-aggregation off")
        if "dap" in self.models:
            self._check_dap(cfg)
        if self.atnas.enabled and cfg.space.name != "cell":
            raise ConfigError('meta.atnas.enabled: AT-NAS searches the cell space; set '
                              'space.name = "cell"')

    def _check_dap(self, cfg: Any) -> None:
        source = self.dap.source
        if source == "conv4-pretrained" and ("baseline" not in cfg.phases
                                             or cfg.baseline.model != "conv4"):
            raise ConfigError("meta.dap.source: 'conv4-pretrained' prunes the run's Conv-4 "
                              "baseline; add 'baseline' to phases with baseline.model = "
                              "'conv4', or use source = 'searched' (width space)")
        if source == "searched" and ("search" not in cfg.phases or cfg.space.name != "width"):
            raise ConfigError(f"meta.dap.source: 'searched' prunes the channels of a width-"
                              f"space subnet (this run: space.name = {cfg.space.name!r}, "
                              f"phases {list(cfg.phases)}); use 'conv4-pretrained'")
        if self.clients and cfg.mode == "federated":
            raise ConfigError("meta.models: 'dap' is meta-trained by the server or in-process "
                              "(its pruned architecture has no Flower-round spec yet); set "
                              "meta.clients = 0 or run centrally")

    @property
    def first_order(self) -> bool:
        return self.algorithm == "fomaml"

    @property
    def l2l_algorithm(self) -> str:
        """The :class:`fednas.meta.learners.MetaLearner` algorithm name (fomaml is first-order
        maml)."""
        return "maml" if self.algorithm == "fomaml" else self.algorithm
