"""Where model weights come from: checkpoint files by URL (a per-node cache), the Hugging Face cache, OpenAI's CLIP
format, and the inventory behind ``magicseg models`` (every model a config will load, and whether it is here)."""

TINY_INIT_SEED = 0
"""The seed every model built in code (``tiny`` and ``random`` weights) is initialised from, so every worker,
process and rerun builds the same weights."""
