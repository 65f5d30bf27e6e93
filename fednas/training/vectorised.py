"""Many clients' local training of one fixed architecture as one batched computation.

The clients of a cohort that train the same model (a derived subnet or a baseline) run as
one ``torch.func.vmap`` over stacked per-client parameters, BatchNorm buffers and batches
(``functional_call`` on one module, whose own tensors are never touched). Each client keeps
its own samples in its own order (the index sequences its generator drew, precomputed by the
caller exactly as :func:`fednas.training.train.train_epoch` draws them), its own
hyperparameters (lr, momentum, weight decay: FedEx samples them per client), its own gradient
clipping and its own BatchNorm statistics: BN in training mode normalises each client's batch
with that client's batch statistics and updates that client's running statistics, because the
vmapped dimension is a batch of separate problems, not a bigger batch.

Clients with the same batch size are one group, ordered longest first: at step ``t`` the
clients that still have a step form a prefix of the stacked tensors, and only that prefix
(views, updated in place) is computed, so a client whose steps are done keeps its parameters,
momentum and BN buffers and no step is computed for nothing. A client whose loss becomes
non-finite is reported diverged (its result is dropped, as the sequential path drops it).

**Equality with the sequential path.** The optimiser is SGD (Nesterov when momentum > 0, as
:func:`fednas.training.train.make_optimizer` builds it) applied elementwise with per-client
scalars, ``clip_grad_norm_``'s rule per client, and the same cross-entropy. The results equal
the one-client-at-a-time path up to float rounding, not bit for bit: under vmap a convolution
over stacked clients runs as one grouped convolution, whose kernels sum in another order
than the per-client kernel, and the optimiser multiplies by a per-client lr tensor where
``torch.optim.SGD`` uses a fused ``add(alpha=-lr)``. The tests bound the difference after a
round (``tests/unit/training/test_vectorised.py``: 1e-4 absolute on every tensor and on the
losses, float32). Randomness inside the model (dropout) is not supported (vmap's
``randomness="error"``); fednas's models have none.

Adam is not vectorised: its cohorts run client by client (:mod:`fednas.federated.cohort`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from fednas.training.stacked_ops import stack_friendly

Split = tuple[torch.Tensor, torch.Tensor]


@dataclass
class ClientJob:
    """One client's local training, fully determined.

    Attributes
    ----------
    train
        The client's train split ``(x, y)`` (on the training device).
    steps
        Index tensors into ``train``, one per optimiser step, in order (all epochs).
    stats_from
        First step of the last epoch: the reported ``train_loss``/``train_acc`` are that
        epoch's, as :func:`~fednas.training.train.train_epoch` reports them.
    lr, momentum, weight_decay
        The client's SGD hyperparameters.
    val
        The client's val split, for the losses reported before/after training (optional).
    """

    train: Split
    steps: list[torch.Tensor]
    stats_from: int
    lr: float
    momentum: float
    weight_decay: float
    val: Split | None = None


@dataclass
class JobResult:
    """What one client's training produced (``state`` is empty when it diverged)."""

    state: dict[str, torch.Tensor]
    metrics: dict[str, float] = field(default_factory=dict)
    diverged: bool = False


def _stack(state: dict[str, torch.Tensor], keys: list[str], k: int,
           device: torch.device) -> dict[str, torch.Tensor]:
    return {n: state[n].detach().to(device).unsqueeze(0).repeat(k, *[1] * state[n].dim())
            for n in keys}


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *[1] * (like.dim() - 1))


class VectorisedTrainer:
    """Train many clients of one architecture at once (see the module docstring).

    Parameters
    ----------
    model
        The architecture (its own parameters and buffers are only shape templates; some of
        its layers are swapped for :mod:`fednas.training.stacked_ops`' batched ones, so pass
        a copy).
    grad_clip
        Per-client gradient-norm clip (``clip_grad_norm_`` rule).
    label_smoothing
        Of the training cross-entropy.
    device
        Where the stacked computation runs.
    eval_batch_size
        Chunk size of the val evaluation (per client).
    """

    def __init__(self, model: nn.Module, *, grad_clip: float, label_smoothing: float = 0.0,
                 device: torch.device, eval_batch_size: int = 1000) -> None:
        self.model = model.to(device)
        stack_friendly(self.model, device)
        self.grad_clip = grad_clip
        self.label_smoothing = label_smoothing
        self.device = device
        self.eval_batch_size = eval_batch_size
        self.param_keys = [n for n, p in model.named_parameters() if p.requires_grad]
        self.buffer_keys = [n for n, _ in model.named_buffers()]
        model_keys = set(model.state_dict())
        if set(self.param_keys) | set(self.buffer_keys) != model_keys:
            raise ValueError("vectorised training needs every state entry to be a trainable "
                             "parameter or a buffer")

        def loss_fn(params, buffers, x, y):
            logits = functional_call(self.model, (params, buffers), (x,))
            loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
            return loss, (loss.detach(), (logits.argmax(1) == y).sum())

        def eval_fn(params, buffers, x, y, mask):
            logits = functional_call(self.model, (params, buffers), (x,))
            losses = F.cross_entropy(logits, y, reduction="none")
            return (losses * mask).sum(), ((logits.argmax(1) == y) * mask).sum()

        self._grad = vmap(grad(loss_fn, has_aux=True), randomness="error")
        self._eval = vmap(eval_fn, randomness="error")

    def run(self, state: dict[str, torch.Tensor], jobs: list[ClientJob], *,
            report_val: int = 0) -> list[JobResult]:
        """Train every job from the global ``state``; results in the order of ``jobs``.

        ``report_val``: 1 adds ``val_loss`` (after training), 2 also ``val_loss_pre``.
        """
        groups: dict[int, list[int]] = defaultdict(list)
        for i, job in enumerate(jobs):
            groups[len(job.steps[0]) if job.steps else 0].append(i)
        out: list[JobResult | None] = [None] * len(jobs)
        for _, members in sorted(groups.items()):
            # longest first: at step t the clients still training are a prefix (views)
            members.sort(key=lambda i: -len(jobs[i].steps))
            for i, res in zip(members, self._run_group(state, [jobs[i] for i in members],
                                                       report_val), strict=True):
                out[i] = res
        return [r for r in out if r is not None]

    # -- one group of equal batch size, longest first ----------------------------------
    def _run_group(self, state: dict[str, torch.Tensor], jobs: list[ClientJob],
                   report_val: int) -> list[JobResult]:
        k, dev = len(jobs), self.device
        params = _stack(state, self.param_keys, k, dev)
        buffers = _stack(state, self.buffer_keys, k, dev)
        metrics: list[dict[str, float]] = [{} for _ in jobs]
        if report_val >= 2:
            for m, loss in zip(metrics, self._val_losses(params, buffers, jobs), strict=True):
                m["val_loss_pre"] = loss
        lr, mom, wd = (torch.tensor([getattr(j, a) for j in jobs], device=dev)
                       for a in ("lr", "momentum", "weight_decay"))
        momentum_buf = {n: torch.zeros_like(p) for n, p in params.items()}
        n_steps = [len(j.steps) for j in jobs]
        stats_from = torch.tensor([j.stats_from for j in jobs], device=dev)
        loss_sum = torch.zeros(k, dtype=torch.float64, device=dev)
        correct = torch.zeros(k, dtype=torch.float64, device=dev)
        seen = torch.zeros(k, dtype=torch.float64, device=dev)
        alive = torch.ones(k, dtype=torch.bool, device=dev)
        self.model.train()
        for t in range(n_steps[0] if k else 0):
            m = sum(1 for n in n_steps if n > t)  # the prefix still training (views below)
            x = torch.stack([j.train[0][j.steps[t]] for j in jobs[:m]]).to(dev)
            y = torch.stack([j.train[1][j.steps[t]] for j in jobs[:m]]).to(dev)
            p_t = {n: p[:m] for n, p in params.items()}
            grads, (loss, hits) = self._grad(p_t, {n: b[:m] for n, b in buffers.items()}, x, y)
            alive[:m] &= torch.isfinite(loss)  # a diverged client's result is dropped
            self._sgd(p_t, grads, {n: b[:m] for n, b in momentum_buf.items()},
                      lr[:m], mom[:m], wd[:m])
            counted = alive[:m] & (stats_from[:m] <= t)
            batch = y.shape[1]
            loss_sum[:m] += torch.where(counted, loss.double() * batch, 0.0)
            correct[:m] += torch.where(counted, hits.double(), 0.0)
            seen[:m] += torch.where(counted, float(batch), 0.0)
        results = []
        val_after = self._val_losses(params, buffers, jobs) if report_val >= 1 else None
        for i in range(len(jobs)):
            if not bool(alive[i]):
                results.append(JobResult({}, metrics[i], diverged=True))
                continue
            s = max(float(seen[i]), 1.0)
            metrics[i].update(train_loss=float(loss_sum[i]) / s, train_acc=float(correct[i]) / s)
            if val_after is not None:
                metrics[i]["val_loss"] = val_after[i]
            client_state = {n: params[n][i] for n in self.param_keys}
            client_state.update({n: buffers[n][i] for n in self.buffer_keys})
            results.append(JobResult({n: client_state[n] for n in state}, metrics[i]))
        return results

    @torch.no_grad()
    def _sgd(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor],
             bufs: dict[str, torch.Tensor], lr: torch.Tensor, mom: torch.Tensor,
             wd: torch.Tensor) -> None:
        """Per-client clip-then-SGD (Nesterov when momentum > 0), in place."""
        norms = torch.stack([g.flatten(1).norm(dim=1) for g in grads.values()], dim=1)
        total = norms.norm(dim=1)
        coef = (self.grad_clip / (total + 1e-6)).clamp(max=1.0)
        for n, p in params.items():
            g = grads[n] * _expand(coef, p)
            d = g + _expand(wd, p) * p
            buf = _expand(mom, p) * bufs[n] + d
            d = torch.where(_expand(mom > 0, p), d + _expand(mom, p) * buf, d)
            bufs[n].copy_(buf)
            p.sub_(_expand(lr, p) * d)

    @torch.no_grad()
    def _val_losses(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                    jobs: list[ClientJob]) -> list[float]:
        """Each client's mean val cross-entropy in eval mode (clients padded to one length)."""
        if any(j.val is None for j in jobs):
            raise ValueError("report_val needs every job's val split")
        self.model.eval()
        n = [len(j.val[1]) for j in jobs]
        total = torch.zeros(len(jobs), dtype=torch.float64, device=self.device)
        for start in range(0, max(n), self.eval_batch_size):
            stop = start + self.eval_batch_size
            width = min(stop, max(n)) - start
            xs, ys, masks = [], [], []
            for j in jobs:
                x, y = j.val[0][start:stop], j.val[1][start:stop]
                pad = width - len(y)
                masks.append(torch.cat([torch.ones(len(y), device=y.device),
                                        torch.zeros(pad, device=y.device)]))
                xs.append(torch.cat([x, x.new_zeros(pad, *x.shape[1:])]))
                ys.append(torch.cat([y, y.new_zeros(pad)]))
            dev = self.device
            losses, _ = self._eval(params, buffers, torch.stack(xs).to(dev),
                                   torch.stack(ys).to(dev), torch.stack(masks).to(dev))
            total += losses.double()
        self.model.train()
        total = total.cpu()
        return [float(total[i]) / max(n[i], 1) for i in range(len(jobs))]
