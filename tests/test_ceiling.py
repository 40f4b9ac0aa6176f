"""ie_experiments.ceiling: the tiered sampler's ceilings, and the env's peek at query rewards."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ie_env.env import InternetExplorerEnv
from ie_experiments.ceiling import expected_gap_g_known, main, reward_known_run
from tests.conftest import latent_config

TINY = latent_config(queries_per_iteration=3, iterations=2, images_per_query=12)


def test_expected_gap_g_known_by_hand():
    g = np.array([1.0, 0.5, 0.0, 0.0])
    # One tier of size 1 (mass 0.8) then the rest (mass 0.2); SMR 3: weights e^{3 (r - 1)}.
    w_rest = np.exp(3.0 * (np.array([0.5, 0.0, 0.0]) - 1.0))
    p = np.concatenate([[0.8], 0.2 * w_rest / w_rest.sum()])
    expected = (p @ g - g.mean()) / (g.max() - g.mean())
    assert expected_gap_g_known(g, 3.0, (1,), (0.8, 0.2)) == pytest.approx(expected, abs=1e-12)
    # All the mass on the best tier of one concept with g = max: gap 1.
    assert expected_gap_g_known(g, 3.0, (1,), (1.0, 0.0)) == pytest.approx(1.0, abs=1e-12)


def test_peek_query_rewards_is_what_a_step_returns_and_changes_nothing():
    a, b = InternetExplorerEnv(TINY), InternetExplorerEnv(TINY)
    a.reset(seed=3)
    b.reset(seed=3)
    peeked = a.peek_query_rewards([5, 17, 5])
    assert peeked.shape == (3,) and peeked[0] == peeked[2]
    assert a.steps == 0 and a.history.t == 0 and not a.cache and a.counters == b.counters
    for concept, want in ((5, peeked[0]), (17, peeked[1])):
        _, ra, *_ = a.step(concept)
        _, rb, *_ = b.step(concept)
        assert ra == rb == pytest.approx(want, abs=1e-6)
    # After an iteration close the peek follows the updated encoder, and still matches a step.
    for concept in (40, 41):
        a.step(concept)
        b.step(concept)
    after = a.peek_query_rewards([7])[0]
    _, r7, *_ = b.step(7)
    assert after == pytest.approx(r7, abs=1e-6)
    everything = a.peek_query_rewards()
    assert everything.shape == (len(a.vocabulary),) and np.isfinite(everything).all()


def test_peek_query_rewards_bad_input():
    env = InternetExplorerEnv(TINY)
    with pytest.raises(RuntimeError, match="reset"):
        env.peek_query_rewards([0])
    env.reset(seed=0)
    with pytest.raises(ValueError, match="concepts must lie"):
        env.peek_query_rewards([len(env.vocabulary)])


def test_reward_known_run_is_seeded_and_ranks_by_exact_rewards():
    env = InternetExplorerEnv(TINY)
    one = reward_known_run(env, 1, 3.0, (5, 20), (0.8, 0.1, 0.1))
    again = reward_known_run(env, 1, 3.0, (5, 20), (0.8, 0.1, 0.1))
    assert one == again
    assert len(one["gap_per_iteration"]) == TINY["iterations"]
    assert one["gap_second_half"] == pytest.approx(one["gap_per_iteration"][1])
    # The sampler over exact rewards beats the uniform first batch on average over seeds.
    runs = [reward_known_run(env, s, 3.0, (5, 20), (0.8, 0.1, 0.1)) for s in range(6)]
    assert np.mean([r["gap_per_iteration"][1] for r in runs]) > np.mean([r["gap_per_iteration"][0] for r in runs]) + 0.1


def test_cli_prints_one_json_object(tmp_path, capsys):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"env": TINY}))
    out = main(["--config", str(path), "--seeds", "2", "--tiers", "5,20"])
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(out))
    row = printed["tiers"]["5,20"]
    assert 0.0 < row["g_known"] <= 1.0 and len(row["per_seed_second_half"]) == 2


@pytest.mark.parametrize("tiers, message", [(["a,b"], "comma-separated"), (["5,20,40"], "need 2 tier sizes"),
                                            (["0,5"], "positive")])
def test_cli_bad_tiers(tiers, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--seeds", "1", "--tiers", *tiers])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_cli_takes_the_gp_agents_config_from_the_file(tmp_path, capsys):
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"env": TINY, "agent_defaults": {"gp": {"tier_sizes": [4, 9], "smr": 2.0,
                                                                          "prior": {"length_scale": 0.5}}}}))
    out = main(["--config", str(path), "--seeds", "1"])
    assert list(out["tiers"]) == ["4,9"] and out["smr"] == 2.0
    capsys.readouterr()


def test_each_episode_is_scored_against_its_own_target():
    # targets.mode train: every reset draws a target, and g must be that episode's.
    env = InternetExplorerEnv({**TINY, "targets": {"mode": "train"}})
    runs = [reward_known_run(env, s, 3.0, (5, 20), (0.8, 0.1, 0.1)) for s in (0, 1)]
    env.reset(seed=1)
    g1 = env.ground_truth_relevance()
    assert runs[1]["g_known"] == pytest.approx(expected_gap_g_known(g1, 3.0, (5, 20), (0.8, 0.1, 0.1)))
    env.reset(seed=0)
    assert not np.array_equal(env.ground_truth_relevance(), g1)  # two different targets
