import numpy as np

from ie_env.learner.surrogate import WhiteningSurrogate
from ie_env.query_store import QueryStore, query_key
from ie_env.replay import ReplayBuffer


def test_replay_keeps_top_half_and_capacity():
    rb = ReplayBuffer(capacity=6)
    imgs = np.arange(10)[:, None].repeat(3, 1)
    assert rb.add_top(imgs, np.arange(10, dtype=np.float32), 0.5) == 5
    assert sorted(rb.images[:, 0].tolist()) == [5, 6, 7, 8, 9]
    rb.add_top(imgs + 100, np.arange(10, dtype=np.float32) + 0.5, 0.5)
    assert len(rb) == 6
    assert rb.rewards.min() >= 7.0


def test_query_store_roundtrip_and_corruption(tmp_path):
    store = QueryStore(tmp_path)
    key = query_key("robin.n.01", "red", 50)
    assert key != query_key("robin.n.01", "", 50)
    assert store.get(key) is None
    store.put(key, images=np.ones((2, 4, 4, 3), np.uint8), concepts=np.array([1, 2]))
    got = store.get(key)
    assert got["images"].shape == (2, 4, 4, 3) and got["concepts"].tolist() == [1, 2]
    path = next(tmp_path.rglob("*.npz"))
    path.write_bytes(path.read_bytes()[:20])  # a truncated download reads as missing
    assert store.get(key) is None
    assert not list(tmp_path.rglob(".*"))  # no temp files left behind


def test_surrogate_whitens_and_drifts_with_data():
    rng = np.random.default_rng(0)
    s = WhiteningSurrogate(4)
    x = rng.standard_normal((500, 4)) * np.array([5.0, 1.0, 1.0, 0.2])
    f0 = s.features(x[:3]).numpy()
    s.update(x)
    f1 = s.features(x[:3]).numpy()
    assert np.allclose(np.linalg.norm(f1, axis=1), 1, atol=1e-5)
    assert not np.allclose(f0, f1)  # the map moved with the data
    white = (x - s.mean) @ s.W
    var = np.diag(np.cov(white.T))
    assert var.max() / var.min() < 10 < 625  # raw variance ratio 625 is nearly whitened away
    state = s.state_dict()
    s2 = WhiteningSurrogate(4)
    s2.load_state_dict(state)
    assert np.allclose(s2.features(x[:5]).numpy(), s.features(x[:5]).numpy())
