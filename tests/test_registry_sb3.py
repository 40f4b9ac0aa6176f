import pytest

from ie_agents.registry import make_agent


def test_sb3_prefix_is_registered_without_importing_the_adapter_first(tmp_path):
    # ie-explore --agent sb3:PATH resolves through the registry alone.
    with pytest.raises(ValueError, match="model file not found"):
        make_agent(f"sb3:{tmp_path / 'missing.zip'}")
