"""RLlib's PPO trains on a registered id with two env runners on a local Ray, with no adapter code:
the id names its package (``ie_env:IELatent-Standard-v1``, gymnasium's "module:id" form) so every
env runner registers the suite itself, and RLlib's own ``FlattenObservations`` connector feeds the
Dict observation to its default model.

The local Ray stays on loopback (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, node at 127.0.0.1): the test
checks the node's address and, while Ray runs, every socket of this process and its children.
One training iteration on the smallest batch (two 16-step fragments): slow for a unit test (Ray and
two env-runner processes start), the only check that the registered spaces, seeding and episode
handling work under RLlib.
"""

from __future__ import annotations

import math
import os
import threading

import numpy as np
import pytest
from _loopback import descendants, inet_sockets

pytest.importorskip("ray.rllib")


class _SocketWatch(threading.Thread):
    """Collects, every 0.2 s until stopped, the sockets of this process and its children that leave loopback."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.off_loopback: list[str] = []
        self.on_loopback = 0  # sockets seen that stay on loopback (summed over the looks)
        self.stop = threading.Event()

    def run(self) -> None:
        while True:
            for line, ok in inet_sockets(descendants(os.getpid())):
                self.on_loopback += ok
                if not ok and line not in self.off_loopback:
                    self.off_loopback.append(line)
            if self.stop.wait(0.2):
                return


def _weights(algo) -> dict[str, np.ndarray]:
    state = algo.learner_group.get_weights()["default_policy"]
    return {k: np.array(v, copy=True) for k, v in state.items()}


def test_ppo_trains_on_the_latent_standard_task_with_two_env_runners(monkeypatch):
    import ray
    from ray._private import ray_constants
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.connectors.env_to_module import FlattenObservations

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray's processes: keep 127.0.0.1
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)  # this process read the variable at import
    watch = _SocketWatch()
    watch.start()
    try:
        ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=2, include_dashboard=False,
                 object_store_memory=80_000_000, log_to_driver=False, configure_logging=False)
        try:
            assert [(n["NodeManagerAddress"], n["Alive"]) for n in ray.nodes()] == [("127.0.0.1", True)]
            config = (
                PPOConfig()
                .environment("ie_env:IELatent-Standard-v1")
                .env_runners(num_env_runners=2, num_envs_per_env_runner=1, rollout_fragment_length=16,
                             num_cpus_per_env_runner=1, sample_timeout_s=600,
                             env_to_module_connector=lambda env, spaces, device: FlattenObservations())
                .training(train_batch_size_per_learner=32, minibatch_size=16, num_epochs=1)
                .learners(num_learners=0)
                .debugging(seed=0)
            )
            algo = config.build_algo()
            try:
                assert algo.env_runner_group.num_remote_env_runners() == 2
                before = _weights(algo)
                result = algo.train()
                after = _weights(algo)
            finally:
                algo.stop()
        finally:
            ray.shutdown()
    finally:
        watch.stop.set()
        watch.join()
    assert watch.off_loopback == [], "Ray left loopback:\n" + "\n".join(watch.off_loopback)
    assert watch.on_loopback > 0  # the watch saw Ray's sockets
    assert result["num_env_steps_sampled_lifetime"] >= 32
    learner = result["learners"]["default_policy"]
    assert learner["num_module_steps_trained_lifetime"] >= 32
    assert math.isfinite(learner["total_loss"]) and math.isfinite(learner["entropy"])
    assert before.keys() == after.keys()
    assert any(not np.array_equal(before[k], after[k]) for k in before)  # the learner's update moved the policy
