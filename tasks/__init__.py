"""Prefect tasks and the Ray glue (planning, per-shard work, actor pools, shard commit, reporting).

Depends on ``magicseg_models``; never the other way round.
"""
