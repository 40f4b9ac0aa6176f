"""The embedded world as an uncurated pool: its images without captions, with the truth kept apart.

``write_world_pool`` renders ``per_concept`` images of every vocabulary concept (namespace
``NS_POOL``, disjoint from the web, target and junk images) into WebDataset shards of PNGs with no
caption, plus the target train and test splits as image folders. The concept of each pool image is
written to a separate ``truth.json`` that curation never reads, so retrieval is scored against the
same ground-truth relevance ``g`` as the query policies (:func:`relevant_share`).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from ie_env.worlds.embedded import EmbeddedWorld, WorldConfig, load_vocabulary
from ie_env.worlds.shared import shared_concept_embeddings

NS_POOL = 4


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def make_world(cfg: WorldConfig) -> EmbeddedWorld:
    vocab = load_vocabulary(cfg.vocabulary)
    return EmbeddedWorld(cfg, vocab, shared_concept_embeddings(vocab))


def write_world_pool(world: EmbeddedWorld, out: Path, per_concept: int = 8, shard_size: int = 5000) -> dict:
    """Render the pool, the target splits and the truth file under ``out``; returns the truth."""
    if world.cfg.fidelity != "pixels":
        raise ValueError("the pool view renders images: use a pixels world (world.fidelity: pixels)")
    out = Path(out)
    (out / "pool").mkdir(parents=True, exist_ok=True)
    n_concepts = len(world.vocabulary)
    concepts = np.repeat(np.arange(n_concepts), per_concept)
    order = np.random.default_rng([world.seed, NS_POOL]).permutation(len(concepts))  # an unsorted pool
    concepts = concepts[order]
    indices = np.arange(len(concepts))
    keys: dict[str, int] = {}
    for s in range(0, len(concepts), shard_size):
        shard = out / "pool" / f"pool-{s // shard_size:05d}.tar"
        images = world.images(concepts[s : s + shard_size], indices[s : s + shard_size], NS_POOL)
        with tarfile.open(shard, "w") as tf:
            for j, img in enumerate(images):
                name = f"{s + j:08d}"
                data = _png(img)
                info = tarfile.TarInfo(f"{name}.png")
                info.size, info.mtime = len(data), 0
                tf.addfile(info, io.BytesIO(data))
                keys[f"{shard.name}/{name}"] = int(concepts[s + j])
    for split in ("train", "test"):
        images, labels, _ = world.target_split(split)
        for i, (img, lab) in enumerate(zip(images, labels, strict=False)):
            d = out / f"target_{split}" / f"class_{int(lab):02d}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i:05d}.png")
    truth = {
        "world": world.fingerprint(),
        "targets": [int(t) for t in world.target_ids],
        "concept_of": keys,
        "relevance": [round(float(g), 6) for g in world.relevance],
    }
    (out / "truth.json").write_text(json.dumps(truth))
    return truth


def relevant_share(selected_keys: list[str], truth: dict, threshold: float = 0.5) -> dict:
    """Share of selected pool images whose concept has ``g >= threshold``; target classes reached."""
    g = np.asarray(truth["relevance"])
    concepts = np.array([truth["concept_of"][k] for k in selected_keys], dtype=np.int64)
    if len(concepts) == 0:
        return {"images": 0, "relevant_share": float("nan"), "mean_g": float("nan"), "target_classes": 0}
    return {
        "images": len(concepts),
        "relevant_share": float((g[concepts] >= threshold).mean()),
        "mean_g": float(g[concepts].mean()),
        "target_classes": len(set(concepts.tolist()) & set(truth["targets"])),
    }


def selected_keys(curated_dir: Path) -> list[str]:
    """Pool keys of every sample in an ``ie-curate`` output folder."""
    keys = []
    for shard in sorted(Path(curated_dir).glob("curated-*.tar")):
        with tarfile.open(shard) as tf:
            for m in tf:
                if m.name.endswith(".json"):
                    keys.append(json.loads(tf.extractfile(m).read())["key"])  # type: ignore[union-attr]
    return keys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ie_env.curation.world_pool", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for pool/, target_train/, target_test/, truth.json")
    p.add_argument("--per-concept", type=int, default=8, help="pool images per vocabulary concept")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--target-theme", default="bird")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if not 1 <= a.per_concept <= 1000:
        print("world_pool: --per-concept must be in [1, 1000]", file=sys.stderr)
        return 2
    world = make_world(WorldConfig(image_size=a.image_size, target_theme=a.target_theme, seed=a.seed))
    truth = write_world_pool(world, Path(a.out), a.per_concept)
    print(json.dumps({"pool_images": len(truth["concept_of"]), "targets": len(truth["targets"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
