"""The LLM key from a Prefect Secret block reaches the client and nothing else."""

import pytest

from magicseg_models.config import load_config, public_config
from magicseg_models.errors import ConfigError
from tasks.secrets import llm_api_key

KEY = "sk-test-FROM-A-SECRET-BLOCK-77"


def test_key_comes_from_the_named_secret_block(prefect_api):
    from prefect.blocks.system import Secret

    Secret(value=KEY).save("magicseg-llm-key", overwrite=True)
    config = load_config("build", "tiny", overrides=["prompts.backend=openai",
                                                     "prompts.api_key_secret=magicseg-llm-key"])
    assert llm_api_key(config.prompts) == KEY
    assert KEY not in str(public_config(config))  # the config only names the block


def test_missing_block_is_a_one_line_error(prefect_api):
    config = load_config("build", "tiny", overrides=["prompts.api_key_secret=no-such-block"])
    with pytest.raises(ConfigError, match="no-such-block") as err:
        llm_api_key(config.prompts)
    assert "\n" not in str(err.value)


def test_no_block_named_means_the_environment():
    assert llm_api_key(load_config("build", "tiny").prompts) is None
