"""The command-line programs of ie-env, imported as ``ie_experiments`` (this folder is installed under that name)."""

if __name__ != "ie_experiments":  # the folder reached by its plain name (e.g. through the current directory)
    raise ImportError(
        f"ie-env's experiments are imported as `ie_experiments` (e.g. `python -m ie_experiments.run`), not as "
        f"{__name__!r}; this `experiments/` folder of the ie-env repository is installed as `ie_experiments`"
    )
