"""ie-env: Internet Explorer (Li et al., ICML 2023) as a Gymnasium environment.

Importing the package registers the environment ids (see :mod:`ie_env.registration`). Without
gymnasium installed nothing is registered, and the parts that do not need it (the embedded world,
the learners, the reward, the benchmarks) still import, e.g. on a bare GPU machine.
"""

try:
    from ie_env.registration import ENV_IDS, register_envs
except ModuleNotFoundError as exc:  # pragma: no cover - exercised by a subprocess test
    if exc.name != "gymnasium":
        raise
    ENV_IDS: dict = {}

    def register_envs() -> None:
        """No-op: gymnasium is not installed."""

else:
    register_envs()

__all__ = ["ENV_IDS", "register_envs"]
__version__ = "0.1.0"
