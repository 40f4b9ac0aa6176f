"""RLlib's PPO trains on a registered id with two env runners on a local Ray, with no adapter code:
the id names its package (``ie_env:IELatent-Standard-v1``, gymnasium's "module:id" form) so every
env runner registers the suite itself, and RLlib's own ``FlattenObservations`` connector feeds the
Dict observation to its default model.

Slow for a unit test (about 15-20 s of CPU; Ray and two env-runner processes start): it is the only
check that the registered spaces, seeding and episode ends work under RLlib.
"""

from __future__ import annotations

import math

import pytest

pytest.importorskip("ray.rllib")


def test_ppo_trains_on_the_latent_standard_task_with_two_env_runners():
    import ray
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.connectors.env_to_module import FlattenObservations

    ray.init(address="local", num_cpus=3, include_dashboard=False, object_store_memory=80_000_000,
             log_to_driver=False, configure_logging=False)
    try:
        config = (
            PPOConfig()
            .environment("ie_env:IELatent-Standard-v1")
            .env_runners(num_env_runners=2, num_envs_per_env_runner=1, rollout_fragment_length=32,
                         num_cpus_per_env_runner=1, sample_timeout_s=600,
                         env_to_module_connector=lambda env, spaces, device: FlattenObservations())
            .training(train_batch_size_per_learner=64, minibatch_size=32, num_epochs=1)
            .learners(num_learners=0)
            .debugging(seed=0)
        )
        algo = config.build_algo()
        try:
            assert algo.env_runner_group.num_remote_env_runners() == 2
            results = [algo.train() for _ in range(2)]
        finally:
            algo.stop()
    finally:
        ray.shutdown()
    assert results[-1]["num_env_steps_sampled_lifetime"] >= 2 * 64
    learner = results[-1]["learners"]["default_policy"]
    assert learner["num_module_steps_trained_lifetime"] >= 64
    assert math.isfinite(learner["total_loss"]) and math.isfinite(learner["entropy"])
