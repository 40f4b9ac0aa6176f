"""The SSL learner's start point: ``ssl.init: scratch | pretrained | PATH``.

``scratch`` is the backbone as timm creates it (random weights unless ``ssl.pretrained``).
``pretrained`` is the artifact ``ie-pretrain`` builds: the loop's own SSL objective trained on the
embedded world's general distribution (renders of the training themes' concepts, never a held-out
theme), cached under ``<cache>/pretrained/<hash>.safetensors`` with a JSON sidecar, where ``hash``
covers the world (vocabulary fingerprint, render settings, the concepts trained on), the backbone
and the recipe (every SSL setting that changes training, and the pretraining budget). ``PATH`` is a
local file: such an artifact, an ``SSLLearner`` state, or a plain timm / torchvision / MoCo-v3
state dict (``.safetensors`` or a ``torch.save`` file read with ``weights_only=True``; nothing is
ever unpickled).

Artifacts are safetensors files of the whole SSL model (backbone, heads and momentum branch), with
``format``, ``backbone``, ``image_size``, ``objective`` and ``hash`` in their metadata, so that a
start whose backbone or image size differs from the config is refused before any weight is copied.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ie_env.config import ConfigError, atomic_write_bytes, atomic_write_text

ARTIFACT_FORMAT = "ie_env.pretrained/1"
NS_PRETRAIN = 4  # the world's image namespace of pretraining renders (web 0, target train 1, test 2, junk 3)
BUILD_COMMAND = "ie-pretrain"
# SSL settings that do not change what pretraining learns (runtime, the loop's per-iteration budget,
# and the start itself): left out of the artifact hash.
_NOT_IN_RECIPE = frozenset({
    "init", "pretrain", "epochs_per_iteration", "min_steps", "max_steps", "eval_batch_size", "seed", "device",
    "amp", "channels_last", "deterministic", "num_threads", "image_size",
})


@dataclass
class PretrainConfig:
    """The pretraining budget of ``ssl.init: pretrained`` (part of the artifact hash)."""

    steps: int = 1425  # SSL steps of ``ssl.batch_size`` images (~15 min for resnet18 at 32 px on 2 idle cores)
    images_per_concept: int = 40  # distinct renders per training concept (2,458 concepts x 40 = 98k)
    seed: int = 0  # initial weights, augmentations and the order of images

    def validate(self) -> None:
        if self.steps < 1 or self.images_per_concept < 1:
            raise ConfigError(f"ssl.pretrain: steps and images_per_concept must be >= 1, got {self.steps}, "
                              f"{self.images_per_concept}")

    def __post_init__(self) -> None:
        self.validate()


def default_cache_dir() -> Path:
    """``<$IE_ENV_CACHE or ~/.cache/ie_env>/pretrained``."""
    from ie_env.vocab.text_embed import default_cache_dir as root

    return root() / "pretrained"


def recipe_dict(ssl: dict[str, Any]) -> dict[str, Any]:
    """The SSL settings (a ``to_dict(SSLConfig)``) that the artifact hash covers."""
    out = {k: v for k, v in ssl.items() if k not in _NOT_IN_RECIPE}
    out["pretrain"] = dict(ssl.get("pretrain") or {})
    return out


def artifact_hash(source: dict[str, Any], ssl: dict[str, Any], image_size: int) -> str:
    """sha256 (16 hex digits) of (source of images, backbone, image size, recipe)."""
    key = {"format": ARTIFACT_FORMAT, "source": source, "image_size": int(image_size), "recipe": recipe_dict(ssl)}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def world_concepts(env_cfg: Any) -> tuple[np.ndarray, list[str]]:
    """``(concept ids, themes)`` of the world's general distribution: the concepts of the training themes
    of the target split (``targets``), without the fixed target's themes when ``targets.mode`` is fixed."""
    from ie_env.target_sampling import TargetSampler
    from ie_env.worlds.embedded import EmbeddedWorld, load_vocabulary
    from ie_env.worlds.shared import shared_concept_embeddings

    vocab = load_vocabulary(env_cfg.world.vocabulary)
    sampler = TargetSampler(vocab, env_cfg.world.num_targets, env_cfg.targets)
    themes = list(sampler.train_themes)
    if env_cfg.targets.mode == "fixed":
        world = EmbeddedWorld(env_cfg.world, vocab, shared_concept_embeddings(vocab))
        fixed = {vocab.concepts[int(i)].theme for i in world.target_ids}
        themes = [t for t in themes if t not in fixed]
    ids = np.sort(np.concatenate([sampler.members[t] for t in themes]))
    return ids, themes


def world_source(env_cfg: Any, concepts: np.ndarray | None = None) -> dict[str, Any]:
    """The hash's description of the embedded world's general distribution."""
    from ie_env.worlds.embedded import load_vocabulary

    w = env_cfg.world
    if concepts is None:
        concepts = world_concepts(env_cfg)[0]
    return {
        "kind": "world", "vocabulary": w.vocabulary, "vocabulary_hash": load_vocabulary(w.vocabulary).fingerprint(),
        "seed": int(w.seed), "latent_dim": int(w.latent_dim), "alignment": float(w.alignment),
        "image_noise": float(w.image_noise),
        "concepts_sha256": hashlib.sha256(np.ascontiguousarray(concepts, dtype=np.int64).tobytes()).hexdigest()[:16],
        "num_concepts": len(concepts),
    }


def world_artifact_path(env_cfg: Any, cache_dir: str | Path | None = None) -> tuple[Path, str]:
    """``(path, hash)`` of the pretrained artifact of an env config's world, backbone and recipe."""
    from ie_env.config import to_dict

    h = artifact_hash(world_source(env_cfg), to_dict(env_cfg.ssl), env_cfg.world.image_size)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"{h}.safetensors", h


# ------------------------------------------------------------------------------------- files
def save_artifact(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write ``model``'s state as safetensors (``meta`` in its header) and ``<path>.json``, atomically."""
    from safetensors.torch import save

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    header = {"format": ARTIFACT_FORMAT, **{k: str(v) for k, v in meta.items() if not isinstance(v, (dict, list))}}
    p = Path(path)
    atomic_write_bytes(p, save(tensors, metadata=header))
    atomic_write_text(p.with_suffix(".json"), json.dumps({"format": ARTIFACT_FORMAT, **meta}, indent=2, default=str))


def _rebuild_hint(how: str) -> str:
    return f"rebuild it with `{how}`" if how else f"rebuild it with `{BUILD_COMMAND}` (same config as this run)"


def read_weights(path: str | Path, rebuild: str = "") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a local weights file: safetensors, or a ``torch.save`` file read with
    ``weights_only=True`` (SSLLearner states and MoCo-v3 / DINO checkpoints are unwrapped).
    ``rebuild``: the command named in the error when the file is missing or unreadable."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"ssl.init: weights file {p} does not exist; {_rebuild_hint(rebuild)}" if rebuild or
                          p.suffix == ".safetensors" else f"ssl.init: weights file {p} does not exist")
    if p.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            tensors: dict[str, torch.Tensor] = {}
            with safe_open(str(p), framework="pt") as fh:
                meta = dict(fh.metadata() or {})
                for k in fh.keys():  # noqa: SIM118 (a safe_open handle is not iterable)
                    tensors[k] = fh.get_tensor(k)
        except Exception as exc:  # safetensors raises its own error type for a torn or foreign file
            raise ConfigError(f"ssl.init: cannot read weights file {p} ({exc}); it is corrupt or not safetensors: "
                              f"{_rebuild_hint(rebuild)}") from exc
        return tensors, meta
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"ssl.init: cannot read weights file {p}: {exc}") from exc
    meta = {}
    if isinstance(obj, dict) and isinstance(obj.get("config"), dict) and "format" in obj:  # an SSLLearner state
        meta = {"format": str(obj["format"]), "backbone": str(obj["config"].get("backbone")),
                "image_size": str(obj["config"].get("image_size")), "objective": str(obj["config"].get("objective"))}
    for key in ("model", "state_dict", "teacher"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"ssl.init: weights file {p} holds no state dict")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}, meta


_PREFIXES = ("module.", "base_encoder.", "backbone.", "encoder.", "model.")


def _backbone_tensors(tensors: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The entries of ``tensors`` that name a tensor of ``own`` once wrapper prefixes are stripped
    (momentum / teacher copies are skipped)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in tensors.items():
        if k.startswith(("momentum_", "teacher_")):
            continue
        name, changed = k, True
        while changed:
            changed = False
            for pre in _PREFIXES:
                if name.startswith(pre) and name not in own:
                    name, changed = name[len(pre):], True
        if name in own:
            out[name] = v
    return out


def apply_init(model: nn.Module, path: str | Path, backbone: str, image_size: int, objective: str,
               rebuild: str = "") -> dict[str, Any]:
    """Load the start at ``path`` into ``model`` (an SSL model with ``backbone`` and a momentum / teacher
    copy): the whole model when the file holds one of the same shape, else the backbone (copied into the
    momentum / teacher backbone too). Refuses a file made for another backbone, image size or objective,
    naming both. Returns what a run records: ``path``, ``sha256``, ``hash``, ``loaded``."""
    tensors, meta = read_weights(path, rebuild)
    for key, mine in (("backbone", backbone), ("image_size", str(int(image_size))), ("objective", objective)):
        theirs = meta.get(key)
        if theirs not in (None, "", "None") and theirs != mine:
            raise ConfigError(f"ssl.init: {path} was trained with {key}={theirs}, this config has {key}={mine}; "
                              f"use a start made for {key}={mine} (`{BUILD_COMMAND}` builds one) or set ssl.{key} "
                              f"to {theirs}")
    whole = model.state_dict()
    if set(tensors) == set(whole) and all(tensors[k].shape == whole[k].shape for k in whole):
        model.load_state_dict(tensors, strict=True)
        loaded = "model"
    else:
        bb: nn.Module = model.backbone  # type: ignore[assignment]
        own = bb.state_dict()
        mapped = _backbone_tensors(tensors, own)
        bad = [k for k in own if k not in mapped or mapped[k].shape != own[k].shape]
        if bad:
            raise ConfigError(
                f"ssl.init: {path} does not fit backbone {backbone!r}: {len(bad)} of its {len(own)} tensors are "
                f"missing or of another shape in the file (e.g. {bad[:3]}); the file was made for another backbone"
                f"{' (' + meta['backbone'] + ')' if meta.get('backbone') else ''}")
        bb.load_state_dict(mapped, strict=True)
        for twin in ("momentum_backbone", "teacher_backbone"):
            if hasattr(model, twin):
                getattr(model, twin).load_state_dict(bb.state_dict(), strict=True)
        loaded = "backbone"
    return {"path": str(path), "sha256": _file_sha256(Path(path)), "hash": meta.get("hash"), "loaded": loaded}


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def _file_sha256(p: Path) -> str:
    """sha256 of a file, memoised per (path, size, mtime): an episode's reset loads the same start again."""
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        _SHA_MEMO[key] = h.hexdigest()
    return _SHA_MEMO[key]
