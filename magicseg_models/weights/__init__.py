"""Where model weights come from: checkpoint files by URL (a per-node cache), the Hugging Face cache, OpenAI's CLIP
format, and the inventory behind ``magicseg models`` (every model a config will load, and whether it is here)."""
