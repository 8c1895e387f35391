"""Context classes end to end: a ``tiny`` build whose LLM prompts name other classes of the vocabulary ("a cat
sleeping next to a dog on a bicycle") stores them as ``context_class_ids``, detects and masks them as annotations
with ``asked = false``, and keeps or drops exactly the samples a build with ``annotate.context_classes=false``
keeps or drops. Also the prompt stage's ``context_class_ids`` on LLM and template prompts."""

from __future__ import annotations

import os
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from magicseg_models.config import load_config
from magicseg_models.dataset.reader import DatasetReader
from magicseg_models.dataset.storage import Storage
from magicseg_models.dataset.store import DatasetStore
from magicseg_models.prompts.stage import PromptWriter
from magicseg_models.vocabulary import Vocabulary
from tests.fake_openai import FakeOpenAI

# what the tiny vocabulary's prompts put around the asked classes (all builtin classes, unambiguous names)
SCENERY = ("dog", "bicycle", "bottle", "horse", "cat")


def scene_responder(messages: list[dict]) -> str:
    """Deterministic LLM: 10 prompts that name the quoted (asked) classes and two other tiny-vocabulary classes.
    The same request gets the same answer, so two builds see the same prompts."""
    text = messages[-1]["content"]
    asked = list(dict.fromkeys(re.findall(r'"([^"]+)"', text)))
    k = int(re.search(r"Write exactly (\d+)", text).group(1))
    others = [name for name in SCENERY if name not in asked]
    subject = " and a ".join(asked)
    return "\n".join(f"{i}. a {subject} sleeping next to a {others[i % len(others)]} on a "
                     f"{others[(i + 1) % len(others)]}, scene {i}, busy street behind" for i in range(1, k + 1))


def _writer(srv, tmp_path, **overrides) -> PromptWriter:
    config = load_config("build", "tiny", overrides=["prompts.backend=openai", f"prompts.base_url={srv.base_url}",
                                                      "prompts.model=fake-llm",
                                                      *[f"{k}={v}" for k, v in overrides.items()]])
    return PromptWriter(config.prompts, Vocabulary.default(), api_key="sk-test", token_counter=None)


def test_prompt_stage_sets_context_class_ids_on_every_row(tmp_path):
    vocab = Vocabulary.default()
    cat, dog, bicycle = (vocab.resolve(n).id for n in ("cat", "dog", "bicycle"))
    jobs = [{"sample_id": f"j{v}", "class_ids": [cat], "variant": v} for v in range(3)]
    with FakeOpenAI(responder=scene_responder) as srv:
        rows = _writer(srv, tmp_path)(jobs)
    assert [r.get("drop_reason") for r in rows] == [None] * 3 and all(r["prompt"] for r in rows)
    for row in rows:
        names = [vocab[i].name for i in row["context_class_ids"]]
        assert names and cat not in row["context_class_ids"]
        assert all(n in row["prompt"] for n in names)
    assert rows[0]["context_class_ids"] == [bicycle, vocab.resolve("bottle").id]  # scene 1: bicycle, then bottle
    template = PromptWriter(load_config("build", "tiny", overrides=["prompts.backend=template"]).prompts, vocab)
    [row] = template([{"sample_id": "t", "class_ids": [cat, dog]}])
    assert row["prompt"] == "a photo of cat and dog." and row["context_class_ids"] == []


def _committed(uri: str) -> tuple[list[str], dict[str, str]]:
    store = DatasetStore(uri)
    kept = [sid for shard in store.read_manifest()["shards"]
            for sid in pq.read_table(store.storage.open(shard["path"]), columns=["sample_id"]).column(0).to_pylist()]
    dropped = {sid: reason for info in store.committed().values() for sid, reason in info.dropped.items()}
    return kept, dropped


@pytest.mark.slow
def test_tiny_build_labels_context_objects_and_keeps_the_same_samples(tmp_path, prefect_api, local_ray):
    from flows.build_dataset import build_dataset

    uris = {on: str(tmp_path / f"context-{on}") for on in (True, False)}
    os.environ["OPENAI_API_KEY"] = "sk-test-context-key"
    try:
        with FakeOpenAI(responder=scene_responder) as srv:
            for on, uri in uris.items():
                # the quality stage's scores are not under test here: one actor less to start per build
                config = load_config("build", "tiny", out=uri, num_samples=8, overrides=[
                    "prompts.backend=openai", f"prompts.base_url={srv.base_url}", "prompts.model=fake-llm",
                    f"annotate.context_classes={str(on).lower()}", "quality.enabled=false"])
                build_dataset(config=config)
    finally:
        os.environ.pop("OPENAI_API_KEY")

    # the asked classes alone decide: the same kept ids, the same dropped ids for the same reasons
    (kept_on, dropped_on), (kept_off, dropped_off) = _committed(uris[True]), _committed(uris[False])
    assert kept_on == kept_off and dropped_on == dropped_off and kept_on

    # the new fields are there, typed as documented
    shard = DatasetReader(uris[True]).shards[0]["path"]
    schema = pq.read_schema(Storage(uris[True]).open(shard))
    assert schema.field("context_class_ids").type == pa.list_(pa.int32())
    assert schema.field("clip_score").type == pa.float32()
    annotation = schema.field("annotations").type.value_type
    assert [(annotation.field(n).type) for n in ("asked", "predicted_iou", "stability_score", "box_fill")] == \
        [pa.bool_(), pa.float32(), pa.float32(), pa.float32()]

    rows_on = {r["sample_id"]: r for r in DatasetReader(uris[True]).iter_rows()}
    rows_off = {r["sample_id"]: r for r in DatasetReader(uris[False]).iter_rows()}
    context_found = 0
    for sid, row in rows_on.items():
        assert row["context_class_ids"] and not set(row["context_class_ids"]) & set(row["class_ids"])
        assert row["context_class_ids"] == rows_off[sid]["context_class_ids"]  # the prompt's, either way
        asked = [a for a in row["annotations"] if a["asked"]]
        context = [a for a in row["annotations"] if not a["asked"]]
        # the tiny generator's pixels are not bit-identical between two runs (its batches differ), so boxes may
        # differ here; mask-for-mask equality on the same images is tests/test_annotation.py's job
        assert {a["class_id"] for a in asked} == set(row["class_ids"]) == \
            {a["class_id"] for a in rows_off[sid]["annotations"]}
        assert all(a["asked"] for a in rows_off[sid]["annotations"])
        assert {a["class_id"] for a in context} <= set(row["context_class_ids"])
        for a in row["annotations"]:
            assert isinstance(a["predicted_iou"], float) and 0 <= a["stability_score"] <= 1
            assert 0 <= a["box_fill"] <= 1
        context_found += len(context)
    assert context_found > 0  # the random tiny detector finds what it is asked for
