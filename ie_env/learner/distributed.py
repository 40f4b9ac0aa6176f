"""The pixels learner on several processes: DistributedDataParallel under ``torchrun``.

    torchrun --nproc_per_node=4 benchmarks/paper_iteration.py --device cuda --ddp   # 4 GPUs, NCCL

:class:`DistributedSSLLearner` wraps an :class:`~ie_env.learner.ssl.SSLLearner` built identically on
every rank (same config, same seed, same images) and trains it with the **same global batch**
(``cfg.batch_size``) split evenly over the ranks, so that R processes reach the weights one process
reaches, up to float rounding:

* every rank draws the same shuffles and augmentations from the learner's seeded generator for the
  whole global batch and keeps its own slice of the views, so a sample's views are the same
  whichever rank trains on it (the augmentation is repeated on each rank: cheap next to the
  forward and backward passes);
* BatchNorm normalises over the global batch: ``torch.nn.SyncBatchNorm`` on CUDA, and on the CPU
  (gloo, where SyncBatchNorm does not run) the same statistics computed with autograd-aware
  ``all_reduce``; the momentum encoder's BatchNorm too, so its keys match;
* MoCo-v3's keys are gathered from all ranks: each rank's queries meet the global batch's keys as
  negatives, as in the single-process loss; DDP averages the gradients, which makes the mean over
  the global batch;
* the optimiser (LARS, SGD, AdamW), gradient clipping and the momentum update then run on equal
  gradients and equal weights on every rank.

DINO under DDP is not supported yet (its centre and KoLeo need their own reductions).
"""

from __future__ import annotations

import inspect
import os
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ie_env.config import ConfigError
from ie_env.learner.augment import to_tensor_batch
from ie_env.learner.base import Learner
from ie_env.learner.moco import MoCoV3
from ie_env.learner.ssl import SSLLearner, shuffled_batches

__all__ = ["DistributedSSLLearner", "init_from_env", "require_distributed"]


def require_distributed(backend: str) -> None:
    """Refuse a torch build without ``torch.distributed`` or without ``backend``, naming its version."""
    if not dist.is_available():
        raise ConfigError(f"multi-process SSL needs torch.distributed, missing in this torch {torch.__version__}")
    available = {"gloo": dist.is_gloo_available(), "nccl": dist.is_nccl_available()}
    if not available.get(backend, False):
        raise ConfigError(f"multi-process SSL: backend {backend!r} is not available in this torch {torch.__version__}")


def init_from_env(backend: str | None = None) -> tuple[int, int]:
    """Join the process group ``torchrun`` describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT);
    NCCL with one GPU per local rank when CUDA is there, gloo otherwise. Returns (rank, world size)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ConfigError("not launched by torchrun (RANK and WORLD_SIZE are unset): "
                          "use torchrun --nproc_per_node=N ... or run without --ddp")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    require_distributed(backend)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


# ---------------------------------------------------------------------------------------------
# Global-batch BatchNorm on the CPU
# ---------------------------------------------------------------------------------------------
class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiable: the gradient of a sum over ranks is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out


class _AllReduceBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A BatchNorm whose training statistics span all ranks' batches (what SyncBatchNorm does on
    CUDA), from autograd-aware all-reduces: two passes (mean, then the centred second moment), as
    precise as the one-process BatchNorm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        all_reduce = _AllReduceSum.apply
        dims = [0] + list(range(2, x.ndim))
        shape = [1, -1] + [1] * (x.ndim - 2)
        count = torch.tensor(float(x.numel() // x.shape[1]), dtype=x.dtype, device=x.device)
        total = all_reduce(torch.cat([x.sum(dim=dims), count.reshape(1)]))
        n = total[-1]
        mean = total[:-1] / n
        centred = x - mean.reshape(shape)
        var = all_reduce(centred.pow(2).sum(dim=dims)) / n
        y = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), m)
                self.running_var.lerp_(var.detach() * n / (n - 1), m)
        return y


class _AllReduceBatchNorm1d(_AllReduceBatchNorm, nn.BatchNorm1d):
    pass


class _AllReduceBatchNorm2d(_AllReduceBatchNorm, nn.BatchNorm2d):
    pass


def global_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm over the global batch: SyncBatchNorm on CUDA; on the CPU, each plain BatchNorm1d/2d
    switched in place to the all-reduce version (same parameters and buffers, same state dict)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    swap = {nn.BatchNorm1d: _AllReduceBatchNorm1d, nn.BatchNorm2d: _AllReduceBatchNorm2d}
    for name, m in model.named_modules():
        if type(m) in swap:
            m.__class__ = swap[type(m)]
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, _AllReduceBatchNorm):
            raise ConfigError(f"multi-process SSL on the CPU: {name} is a {type(m).__name__}, which has no "
                              "global-batch version here; use a backbone with plain BatchNorm, or CUDA")
    return model


# ---------------------------------------------------------------------------------------------
# MoCo-v3 with keys from every rank
# ---------------------------------------------------------------------------------------------
def _gather(x: torch.Tensor) -> torch.Tensor:
    """All ranks' ``x`` (no gradient), concatenated in rank order."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def _ctr(q: torch.Tensor, k_all: torch.Tensor, offset: int, temperature: float) -> torch.Tensor:
    """MoCo-v3's InfoNCE of local queries against the global batch's keys (positives at ``offset + i``)."""
    with torch.autocast(device_type=q.device.type, enabled=False):
        q = F.normalize(q.float(), dim=1)
        k = F.normalize(k_all.float(), dim=1)
        labels = torch.arange(q.shape[0], device=q.device) + offset
        return F.cross_entropy(q @ k.t() / temperature, labels) * (2.0 * temperature)


class _GlobalMoCo(nn.Module):
    """The loss of :class:`MoCoV3` on this rank's slice of the global batch (what DDP wraps)."""

    def __init__(self, moco: MoCoV3) -> None:
        super().__init__()
        self.moco = moco

    def forward(self, views: list[torch.Tensor]) -> torch.Tensor:
        m = self.moco
        x1, x2 = views
        q1 = m.predictor(m.projector(m.backbone(x1)))
        q2 = m.predictor(m.projector(m.backbone(x2)))
        with torch.no_grad():
            k1 = _gather(m.momentum_projector(m.momentum_backbone(x1)))
            k2 = _gather(m.momentum_projector(m.momentum_backbone(x2)))
        offset = dist.get_rank() * x1.shape[0]
        return _ctr(q1, k2, offset, m.temperature) + _ctr(q2, k1, offset, m.temperature)


class DistributedSSLLearner(Learner):
    """An :class:`SSLLearner` trained with DDP over the initialised process group (see module docs)."""

    def __init__(self, learner: SSLLearner) -> None:
        if not (dist.is_available() and dist.is_initialized()):
            raise ConfigError("DistributedSSLLearner needs an initialised process group (init_from_env())")
        if learner.cfg.objective != "mocov3" or not isinstance(learner.model, MoCoV3):
            raise ConfigError(f"multi-process SSL supports objective 'mocov3'; got {learner.cfg.objective!r}")
        self.learner = learner
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        global_batchnorm(learner.model, learner.device)
        ids = [learner.device.index or 0] if learner.device.type == "cuda" else None
        # Buffers (BatchNorm running statistics) stay equal without a broadcast before every forward.
        ddp = nn.parallel.DistributedDataParallel
        no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(ddp).parameters
                   else {"broadcast_buffers": False})
        self.ddp = ddp(_GlobalMoCo(learner.model), device_ids=ids, **no_sync)

    # Everything but training is the wrapped learner's.
    def features(self, images: np.ndarray | torch.Tensor, on_device: bool = False) -> torch.Tensor:
        return self.learner.features(images, on_device=on_device)

    def planned_steps(self, n_images: int) -> int:
        return self.learner.planned_steps(n_images)

    def state_dict(self) -> dict[str, Any]:
        return self.learner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state)

    def update(self, images: np.ndarray | torch.Tensor, steps: int | None = None) -> dict[str, float]:
        """:meth:`SSLLearner.update` with the global batch split over the ranks; every rank passes the
        same ``images``. Returns ``loss`` (over the global batch), ``steps``, ``images_per_second``
        (all ranks together) and the learner's other figures."""
        lrn, cfg = self.learner, self.learner.cfg
        x_all = to_tensor_batch(images)
        n = int(x_all.shape[0])
        if n < 2:
            raise ValueError(f"update needs at least 2 images (contrastive batch), got {n}")
        steps = lrn.planned_steps(n) if steps is None else steps
        batch = min(cfg.batch_size, n)
        if batch % self.world_size:
            raise ConfigError(f"the global batch ({batch}) must split evenly over {self.world_size} processes")
        if steps <= 0:
            return {"loss": float("nan"), "steps": 0.0, "images_per_second": 0.0, "views_per_second": 0.0}
        local = batch // self.world_size
        lo, hi = self.rank * local, (self.rank + 1) * local
        src = x_all.to(lrn.device) if lrn.device.type == "cuda" and x_all.numel() < 2**31 else x_all
        # The same generator draws, in the same order, as SSLLearner.update: equal runs for equal seeds.
        seed = int(torch.randint(0, 2**62, (1,), generator=lrn.generator))
        cuda_devices = [lrn.device.index or 0] if lrn.device.type == "cuda" else []
        losses: list[torch.Tensor] = []
        m = cfg.momentum_ema
        online = [p for _, p in lrn.model.online_parameters()]
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(seed)
            lrn.model.train()
            for s, xb in enumerate(shuffled_batches(src, batch, steps, lrn.generator)):
                views = [v[lo:hi] for v in lrn.augment(xb, lrn.generator)]
                if cfg.channels_last:
                    views = [v.contiguous(memory_format=torch.channels_last) for v in views]
                lr = lrn._lr()
                for g in lrn.optimizer.param_groups:
                    g["lr"] = lr
                with lrn._autocast():
                    loss = self.ddp(views)
                mean_loss = loss.detach().clone()
                dist.all_reduce(mean_loss)
                mean_loss /= self.world_size
                if not bool(torch.isfinite(mean_loss)):
                    raise FloatingPointError(f"SSL loss is {float(mean_loss)} at global step {lrn.train_steps_total}; "
                                             "the step was not applied")
                lrn.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    nn.utils.clip_grad_norm_(online, cfg.grad_clip)
                lrn.optimizer.step()
                m = lrn._momentum(s, steps)
                lrn.model.momentum_update(m)
                lrn.train_steps_total += 1
                losses.append(mean_loss)
        if lrn.device.type == "cuda":
            torch.cuda.synchronize(lrn.device)
        dt = max(time.perf_counter() - t0, 1e-9)
        lrn.updates += 1
        ls = torch.stack(losses).float().cpu()
        return {
            "loss": float(ls.mean()), "loss_first": float(ls[0]), "loss_last": float(ls[-1]),
            "steps": float(steps), "batch_size": float(batch), "processes": float(self.world_size),
            "epochs": steps * batch / n, "images_per_second": steps * batch / dt,
            "views_per_second": steps * batch * len(lrn.augment.specs) / dt, "seconds": dt,
            "lr": float(lrn._lr()), "momentum": float(m), "train_steps_total": float(lrn.train_steps_total),
        }
