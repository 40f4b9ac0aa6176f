"""DDP SSL: two gloo processes on loopback, each with half the global batch, reach the weights one
process reaches with the whole batch (BatchNorm over the global batch, keys gathered, LARS).

The two processes are forked together by one ``torch.multiprocessing.start_processes``: they start
with this process's imports (spawned ones spend most of the test importing torch and torchvision
again) and set one torch thread before any work."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from ie_env.config import ConfigError
from ie_env.learner.ssl import SSLConfig, SSLLearner

STEPS = 5


def _config() -> SSLConfig:
    return SSLConfig(backbone="test_resnet", image_size=32, batch_size=16, hidden_dim=64, proj_dim=32, optimizer="lars",
                     lr=0.05, weight_decay=1e-4, momentum_ema=0.9, deterministic=True, device="cpu", seed=3)


def _images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(40, 32, 32, 3), dtype=np.uint8)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from ie_env.learner.distributed import DistributedSSLLearner

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        learner = DistributedSSLLearner(SSLLearner(_config()))
        stats = learner.update(_images(), steps=STEPS)
        torch.save({"model": learner.state_dict()["model"], "loss": stats["loss"]}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_reach_the_one_process_weights(tmp_path):
    reference = SSLLearner(_config())
    start = {k: v.clone() for k, v in reference.state_dict()["model"].items()}
    ref_loss = reference.update(_images(), steps=STEPS)["loss"]
    ref = reference.state_dict()["model"]
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    moved = max(float((ref[k].float() - start[k].float()).abs().max()) for k in ref if ref[k].is_floating_point())
    assert moved > 1e-2  # the steps changed the weights, so equality below says something
    for got in ranks:
        assert got["loss"] == pytest.approx(ref_loss, rel=1e-4)
        assert set(got["model"]) == set(ref)
        # Online, momentum encoder and BatchNorm running statistics. The sums run in another order on two
        # processes: float32 rounding (1e-5 relative after one step) grows over the steps, to ~3e-4 here,
        # four orders of magnitude below how far the weights moved; per-rank BatchNorm statistics or
        # per-rank negatives would be off by far more.
        for k, v in ref.items():
            torch.testing.assert_close(got["model"][k], v, rtol=1e-3, atol=1e-3, msg=lambda m, k=k: f"{k}: {m}")
    for k in ref:  # the ranks hold the very same weights
        assert torch.equal(ranks[0]["model"][k], ranks[1]["model"][k]), k


def test_refuses_without_a_process_group_and_dino():
    from ie_env.learner.distributed import DistributedSSLLearner, init_from_env

    with pytest.raises(ConfigError, match="initialised process group"):
        DistributedSSLLearner(SSLLearner(_config()))
    with pytest.raises(ConfigError, match="not launched by torchrun"):
        init_from_env()
