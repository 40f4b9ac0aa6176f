"""The policies of ie-env, imported as ``ie_agents`` (this folder is installed under that name)."""

if __name__ != "ie_agents":  # the folder reached by its plain name (e.g. through the current directory)
    raise ImportError(
        f"ie-env's agents are imported as `ie_agents` (e.g. `from ie_agents.base import Agent`), not as {__name__!r}; "
        "this `agents/` folder of the ie-env repository is installed as `ie_agents`"
    )
