"""Datasets with chosen quality scores, for the inspect and preview tests."""

from __future__ import annotations


def write_scored_dataset(uri: str, n: int = 8, shard_size: int = 4, *, clip_scores=None, context_every: int = 3):
    """A v2 dataset of ``synthetic_row`` samples with chosen ``clip_score`` values (None = not computed) and, on
    every ``context_every``-th sample, its last annotation marked ``asked = false``. Returns the rows written."""
    from magicseg_models.dataset.store import DatasetStore
    from magicseg_models.dataset.synthetic import synthetic_row

    store = DatasetStore(uri)
    store.write_run_header(config={}, planned=n, classes=["cat", "dog"], selected_classes=["cat", "dog"], models={})
    rows = []
    for i in range(n):
        row = synthetic_row(f"q{i:03d}", [i % 2], [["cat", "dog"][i % 2]], seed=100 + i, height=32, width=32)
        if clip_scores is not None:
            row["clip_score"] = clip_scores[i]
        if context_every and i % context_every == 0:
            row["annotations"][-1]["asked"] = False
        rows.append(row)
    for start in range(0, n, shard_size):
        with store.open_shard(start // shard_size) as writer:
            writer.write(rows[start:start + shard_size])
            writer.commit(planned=len(rows[start:start + shard_size]), dropped={})
    return rows
