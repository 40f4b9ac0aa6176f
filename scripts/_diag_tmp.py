import sys, numpy as np, torch
torch.set_num_threads(1)
from ie_env.env import InternetExplorerEnv
from scipy.stats import spearmanr
for spec in sys.argv[1:]:
    a, dim, noise = spec.split(",")
    env = InternetExplorerEnv({"world": {"fidelity": "latent", "alignment": float(a), "latent_dim": int(dim), "image_noise": float(noise)}, "iterations": 200, "queries_per_iteration": 1000})
    env.reset(seed=0)
    g = env.world.relevance
    idx = np.random.default_rng(0).choice(len(g), 400, replace=False)
    r = np.array([env.step(int(i))[1] for i in idx])
    E = env.concept_embeddings; ts = (E[idx] @ E[env.world.target_ids].T).max(1)
    rt = np.array([env.step(int(i))[1] for i in env.world.target_ids])
    print(spec, "r~g %.2f r~textsim %.2f g~textsim %.2f  targets r %.3f vs random p50 %.3f p99 %.3f ; share g>=.5 %.4f meang %.3f" % (spearmanr(r, g[idx])[0], spearmanr(r, ts)[0], spearmanr(g[idx], ts)[0], rt.mean(), np.median(r), np.percentile(r,99), (g>=.5).mean(), g.mean()), flush=True)
