"""``ie-eval``: k-NN and linear-probe accuracy of a saved encoder on a labeled target set.

The checkpoint is an ``ie-explore`` run's ``checkpoints/iter_XXXX.pt`` (the learner lives under
``state["env"]["learner"]``) or a bare ``SSLLearner.state_dict()``. The target comes from ``--config``
(a run's ``config.yaml`` or any run YAML; default: the run directory's own ``config.yaml`` when the
checkpoint sits in one) and is overridden by the ``--target-*`` flags. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ie_env.config import ConfigError, from_dict, resolve
from ie_env.evaluation.knn import knn_accuracies
from ie_env.evaluation.linear_probe import linear_probe_accuracy
from ie_env.learner.ssl import STATE_FORMAT, SSLConfig, SSLLearner
from ie_env.plain_state import UnsafeFileError, load_torch_bytes
from ie_env.targets import TargetConfig, TargetSet, load_target


def load_learner(
    path: str | Path, device: str = "cpu", trust_pickle: bool = False
) -> tuple[SSLLearner, dict[str, Any]]:
    """The ``SSLLearner`` stored in ``path`` and the checkpoint's full state, read as plain data
    (``weights_only``): a file that holds pickled objects is refused unless ``trust_pickle``. A
    ``.sha256`` digest beside it (as ie-explore writes) must match."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"checkpoint {p} does not exist")
    try:
        data = p.read_bytes()
        digest = p.with_name(p.name + ".sha256")
        if digest.is_file() and hashlib.sha256(data).hexdigest() != digest.read_text().strip():
            raise ValueError(f"its sha256 does not match {digest.name} (corrupt or truncated)")
        state = load_torch_bytes(data, trust_pickle=trust_pickle, name=f"checkpoint {p}")
    except UnsafeFileError:
        raise
    except Exception as exc:  # any reader error of a damaged file
        raise ConfigError(f"cannot read checkpoint {p}: {exc}") from exc
    learner_state = state
    if isinstance(state, dict) and isinstance(state.get("env"), dict):
        learner_state = state["env"].get("learner")
    if not isinstance(learner_state, dict) or learner_state.get("format") != STATE_FORMAT:
        raise ConfigError(
            f"{p} holds no SSLLearner state (a pixels-fidelity ie-explore checkpoint or SSLLearner.state_dict())"
        )
    cfg = from_dict(SSLConfig, learner_state["config"])
    cfg = replace(cfg, pretrained=False, checkpoint=None, device=device)  # the weights come from the state
    learner = SSLLearner(cfg)
    learner.load_state_dict(learner_state)
    return learner, state


def _embedded_target(run_cfg: Any, state: dict[str, Any], size: int) -> TargetSet:
    from ie_env.vocab.text_embed import concept_embeddings
    from ie_env.worlds.embedded import EmbeddedWorld, load_vocabulary

    wcfg = replace(run_cfg.env.world, image_size=size, fidelity="pixels")
    vocab = load_vocabulary(wcfg.vocabulary)
    world = EmbeddedWorld(wcfg, vocab, concept_embeddings(vocab))
    ids = (state.get("env") or {}).get("target_ids") if isinstance(state, dict) else None
    if ids is not None:
        world.set_targets(np.asarray(ids))
    return load_target(TargetConfig(), size, world)


def evaluate(learner: SSLLearner, target: TargetSet, seed: int = 0, T: float = 0.07) -> dict[str, Any]:
    """k-NN (k = 20, 10, 200; temperature ``T``) and linear-probe accuracy on ``target``."""
    tr = learner.features(target.train_images)
    te = learner.features(target.test_images)
    knn = knn_accuracies(tr, target.train_labels, te, target.test_labels, ks=(20, 10, 200), T=T)
    probe = linear_probe_accuracy(tr, target.train_labels, te, target.test_labels, seed=seed)
    return {
        "knn_accuracy": knn[20],
        "knn_accuracy_k10": knn[10],
        "knn_accuracy_k200": knn[200],
        "linear_probe_accuracy": probe["accuracy"],
        "linear_probe_best_C": probe["best_C"],
        "train_images": int(len(target.train_labels)),
        "test_images": int(len(target.test_labels)),
        "classes": len(target.class_names),
        "skipped_files": int(target.skipped),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ie-eval", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="iter_XXXX.pt of an ie-explore run, or an SSLLearner state")
    p.add_argument("--config", default=None, help="run YAML whose env.target is used (default: the run's config.yaml)")
    p.add_argument("--target-kind", choices=("embedded", "imagefolder", "torchvision"), default=None)
    p.add_argument("--root", default=None, help="image folder or torchvision dataset root")
    p.add_argument("--name", default=None, help="torchvision dataset name (flowers102, oxford_pets, ...)")
    p.add_argument("--test-fraction", type=float, default=None)
    p.add_argument("--max-per-class", type=int, default=None)
    p.add_argument("--image-size", type=int, default=None, help="default: the encoder's training size")
    p.add_argument("--download", action="store_true", help="torchvision: fetch the dataset when absent")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--seed", type=int, default=0, help="linear-probe validation split seed")
    p.add_argument("--trust-pickle", action="store_true",
                   help="load a checkpoint that holds pickled objects (unpickling can run code: only your own files)")
    return p.parse_args(argv)


def _run_config(args: argparse.Namespace) -> Any:
    from ie_experiments.run import RunConfig

    path = args.config
    if path is None:
        guess = Path(args.checkpoint).resolve().parent.parent / "config.yaml"
        path = str(guess) if guess.is_file() else None
    return resolve(RunConfig, path)


def run(args: argparse.Namespace) -> dict[str, Any]:
    learner, state = load_learner(args.checkpoint, args.device, trust_pickle=args.trust_pickle)
    run_cfg = _run_config(args)
    tcfg = run_cfg.env.target
    over = {
        "kind": args.target_kind, "root": args.root, "name": args.name, "test_fraction": args.test_fraction,
        "max_per_class": args.max_per_class, "image_size": args.image_size,
    }
    tcfg = replace(tcfg, **{k: v for k, v in over.items() if v is not None})
    if args.download:
        tcfg = replace(tcfg, download=True)
    tcfg.validate()
    size = int(tcfg.image_size or learner.cfg.image_size)
    if tcfg.kind == "embedded":
        target = _embedded_target(run_cfg, state, size)
    else:
        target = load_target(tcfg, size)
    out = evaluate(learner, target, seed=args.seed)
    out["checkpoint"] = str(args.checkpoint)
    out["target"] = tcfg.kind if tcfg.kind == "embedded" else f"{tcfg.kind}:{tcfg.name or tcfg.root}"
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        out = run(args)
    except (ConfigError, ValueError) as exc:
        print(f"ie-eval: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
