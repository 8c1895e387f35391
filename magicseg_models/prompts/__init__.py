"""Prompt stage: the LLM instruction, parsing and checking its answers, counterfactual text."""
