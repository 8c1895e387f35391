"""Secrets from Prefect Secret blocks, resolved where Prefect lives (never inside magicseg_models).

The value goes straight into the client that needs it; it is never a flow parameter, a log line or an artifact.
"""

from __future__ import annotations

from magicseg_models.config import PromptsConfig
from magicseg_models.errors import ConfigError


def llm_api_key(config: PromptsConfig) -> str | None:
    """The LLM key from the Secret block named by ``prompts.api_key_secret``; None means ``OPENAI_API_KEY``."""
    if not config.api_key_secret:
        return None
    from prefect.blocks.system import Secret

    try:
        return Secret.load(config.api_key_secret).get()
    except ValueError:
        raise ConfigError(f"Prefect Secret block '{config.api_key_secret}' (prompts.api_key_secret) not found; "
                          "create it with `prefect block create secret` or unset the key") from None
