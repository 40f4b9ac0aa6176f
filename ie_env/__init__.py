"""ie-env: Internet Explorer (Li et al., ICML 2023) as a Gymnasium environment.

Importing the package registers the environment ids (see :mod:`ie_env.registration`).
"""

from ie_env.registration import ENV_IDS, register_envs

register_envs()

__all__ = ["ENV_IDS", "register_envs"]
__version__ = "0.1.0"
