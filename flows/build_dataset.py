"""Prefect flow ``build-dataset``: plan -> prompts -> image pairs -> annotations -> shards + manifest.

Prefect is the control plane: one task run per chunk of shards (the unit of retry and of visibility), a live
progress artifact, a summary table and a preview at the end. Ray is the compute plane: one actor pool per stage
holds its model for the whole run, and batches stream through the pools. Resumable: shards with a commit record
are skipped, so a rerun after any kill does only what is missing; a larger ``num_samples`` only adds jobs.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, \
    update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner

from flows.params import resolve_config
from flows.progress import TerminalProgress
from magicseg_models.config import BuildConfig, config_differences, public_config
from magicseg_models.dataset.store import DatasetStore
from magicseg_models.errors import ConfigError
from magicseg_models.planning import PlanSpec, num_shards, plan_shard, spec_from_config
from magicseg_models.vocabulary import Vocabulary


@dataclass
class _Run:
    """What the chunk tasks of one flow run share (kept out of task parameters: it holds actors, not data)."""

    config: BuildConfig
    spec: PlanSpec
    store: DatasetStore
    executor: Any
    settings: dict
    lock: threading.Lock = field(default_factory=threading.Lock)
    kept: int = 0
    dropped: int = 0
    shards_done: int = 0

    def count(self, kept: int, dropped: int) -> None:
        with self.lock:
            self.kept += kept
            self.dropped += dropped


_RUNS: dict[str, _Run] = {}
COMPLETED_EVENT = "magicseg.dataset.completed"  # prefect.yaml's train/adhoc trigger listens for it


@task(name="build-shards", retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE,
      task_run_name="shards {shards}")
def build_shards(run_id: str, shards: list[int]) -> list[dict]:
    """Build and commit a chunk of shards; a retry redoes only those of its shards that did not commit."""
    from tasks.shard_work import build_shard

    run = _RUNS[run_id]
    done = run.store.committed()
    infos = []
    for index in shards:
        shard = plan_shard(run.spec, index)
        if shard.is_complete(done.get(index)):
            continue
        info = build_shard(run.store, shard, run.executor, settings=run.settings, on_rows=run.count)
        with run.lock:
            run.shards_done += 1
        infos.append(info.manifest_entry())
    return infos


def _shard_complete(record, spec: PlanSpec, shard: int) -> bool:
    return plan_shard(spec, shard).is_complete(record)


def _check_rerun(store: DatasetStore, config: BuildConfig, overwrite: bool) -> None:
    header = store.read_run_header()
    if header is None:
        return
    if overwrite:
        for rel in store.storage.list("_magicseg/commits"):
            store.storage.remove(f"_magicseg/commits/{rel}")
        for rel in store.storage.list("shards"):
            store.storage.remove(f"shards/{rel}")
        return
    differing = config_differences(header.get("config", {}), public_config(config))
    if differing:
        raise ConfigError(f"{store.uri} was built with a different config ({', '.join(differing[:6])}"
                          f"{' ...' if len(differing) > 6 else ''}); use another --out, or --overwrite")
    old_planned = int(header.get("planned", 0))
    if config.num_samples < old_planned:
        raise ConfigError(f"{store.uri} already plans {old_planned} samples; num_samples={config.num_samples} "
                          "would shrink it (use --overwrite to start again)")



@flow(name="build-dataset", task_runner=ThreadPoolTaskRunner(max_workers=4), log_prints=True,
      validate_parameters=True)
def build_dataset(config: BuildConfig | None = None, preset: str | None = None, out: str | None = None,
                  num_samples: int | None = None, seed: int | None = None, overwrite: bool = False,
                  out_root: str | None = None) -> dict:
    """Build (or resume, or grow) the dataset at ``out``. Returns the run summary.

    ``out_root`` (scheduled runs): without ``out``, the dataset goes to ``out_root/YYYY-MM-DD`` of the run's
    scheduled date, and an unset ``seed`` becomes that date (``YYYYMMDD``), so each night builds new samples and a
    retry or late start of the same night resumes the same URI.
    """
    import ray

    from tasks.lock import BuildLock
    from tasks.executor import RayExecutor
    from tasks.ray_runtime import ensure_ray
    from tasks.secrets import llm_api_key
    from tasks.stage_factories import build_stages

    logger = get_run_logger()
    if not out and out_root and (config is None or not _get(config, "out")):
        out, seed = _dated(out_root, seed)
    config = resolve_config("build", config, preset, out=out, num_samples=num_samples, seed=seed)
    if not config.out:
        raise ConfigError("build-dataset needs out (a folder or s3://bucket/prefix) or out_root")
    vocabulary = Vocabulary.load(config.vocabulary.file, config.vocabulary.classes)
    spec = spec_from_config(config, vocabulary)
    store = DatasetStore(config.out, config.storage.storage_options)
    began = time.perf_counter()
    with BuildLock(store.storage, run_name=str(uuid.uuid4())[:8]):
        _check_rerun(store, config, overwrite)
        models = {"generator": config.generator.model if config.generator.weights == "pretrained"
                  else f"{config.generator.weights}:{config.generator.model}",
                  "detector": f"{config.annotate.detector.weights}:{config.annotate.detector.model}",
                  "segmenter": f"{config.annotate.segmenter.weights}:{config.annotate.segmenter.model_type}",
                  "prompts": f"{config.prompts.backend}:{config.prompts.model}"}
        store.write_run_header(config=public_config(config), planned=spec.num_samples,
                               classes=vocabulary.full_names(), selected_classes=vocabulary.names, models=models)
        done = store.committed()
        todo = [s for s in range(num_shards(spec)) if not _shard_complete(done.get(s), spec, s)]
        logger.info("%d of %d shards to build at %s", len(todo), num_shards(spec), store.uri)
        started_ray = ensure_ray(config.ray)
        api_key = llm_api_key(config.prompts) if config.prompts.backend == "openai" else None
        executor = RayExecutor(build_stages(config, api_key), ray_config=config.ray)
        executor.start()
        run_id = uuid.uuid4().hex
        run = _Run(config, spec, store, executor, settings={k: public_config(config)[k]
                                                            for k in ("prompts", "generator", "annotate")})
        _RUNS[run_id] = run
        try:
            stats = _run_chunks(run_id, run, todo, began)
        finally:
            _RUNS.pop(run_id, None)
            executor.shutdown()
            if started_ray:
                ray.shutdown()
        manifest = store.refresh_manifest()
    summary = _summary(store, manifest, stats, time.perf_counter() - began)
    _final_artifacts(summary, store)
    emit_event(event=COMPLETED_EVENT,
               resource={"prefect.resource.id": f"magicseg.dataset.{summary['uri']}",
                         "prefect.resource.name": summary["uri"]},
               payload={"uri": summary["uri"], "kept": summary["kept"], "flow_run_id": str(flow_run.id or "")})
    return summary


def _get(config: BuildConfig | dict, key: str) -> Any:
    return config.get(key) if isinstance(config, dict) else getattr(config, key, None)


def _dated(out_root: str, seed: int | None) -> tuple[str, int]:
    """``out_root/YYYY-MM-DD`` of the scheduled start (UTC), and the date as the seed unless one is given."""
    from datetime import datetime, timezone

    scheduled = flow_run.scheduled_start_time
    day = (scheduled.astimezone(timezone.utc) if scheduled else datetime.now(timezone.utc)).date()
    return f"{out_root.rstrip('/')}/{day.isoformat()}", seed if seed is not None else int(day.strftime("%Y%m%d"))


def _run_chunks(run_id: str, run: _Run, todo: list[int], began: float) -> dict:
    size = run.config.shards_per_task
    chunks = [todo[i:i + size] for i in range(0, len(todo), size)]
    planned_rows = sum(plan_shard(run.spec, s).planned for s in todo)
    progress_id = create_progress_artifact(0.0, key="build-progress", description="planned / done / kept / dropped")
    futures = [build_shards.submit(run_id, chunk) for chunk in chunks]
    with TerminalProgress("building samples", total=planned_rows) as bar:
        while not all(f.state.is_final() for f in futures):
            time.sleep(1.0)
            _report(progress_id, bar, run, planned_rows, began)
        for f in futures:
            f.result()  # raises if a chunk failed after its retries: the flow run fails, committed shards stay
        _report(progress_id, bar, run, planned_rows, began)
    return run.executor.stats()


def _report(progress_id, bar: TerminalProgress, run: _Run, planned_rows: int, began: float) -> None:
    done = run.kept + run.dropped
    rate = done / max(time.perf_counter() - began, 1e-9)
    update_progress_artifact(progress_id, 100.0 * done / max(planned_rows, 1),
                             description=f"planned {planned_rows}, done {done}, kept {run.kept}, "
                                         f"dropped {run.dropped}, {rate:.2f} samples/s")
    bar.update(done, info=f"kept {run.kept} dropped {run.dropped} {rate:.2f}/s")


def _summary(store: DatasetStore, manifest: dict, stats: dict, seconds: float) -> dict:
    counts = manifest["counts"]
    stages = {}
    for name, actors in stats.items():
        busy = sum(a["busy_s"] for a in actors)
        nodes: dict[str, int] = {}  # rows per Ray node: where a multi-node cluster put the work
        for actor in actors:
            nodes[actor["node_id"]] = nodes.get(actor["node_id"], 0) + actor["rows"]
        rows = max((a["rows"] for a in actors), default=0) and sum(a["rows"] for a in actors)
        stages[name] = {"actors": len(actors), "rows": rows, "busy_s": round(busy, 3),
                        "rows_per_busy_s": round(rows / busy, 3) if busy else None,
                        "nodes": nodes,
                        "stage": [a["stage"] for a in actors]}
    return {"uri": store.uri, "planned": counts["planned"], "kept": counts["kept"], "dropped": counts["dropped"],
            "shards": len(manifest["shards"]), "seconds": round(seconds, 2), "stages": stages}


def _final_artifacts(summary: dict, store: DatasetStore) -> None:
    rows = [{"stage": name, "actors": s["actors"], "rows": s["rows"], "busy_s": s["busy_s"],
             "rows_per_busy_s": s["rows_per_busy_s"]} for name, s in summary["stages"].items()]
    prompt_stats = [st for st in summary["stages"].get("prompts", {}).get("stage", []) if st]
    for st in prompt_stats:
        llm = st.get("llm", {})
        rows.append({"stage": "prompts/llm", "actors": "", "rows": llm.get("calls", 0),
                     "busy_s": f"tokens {llm.get('prompt_tokens', 0)}/{llm.get('completion_tokens', 0)}",
                     "rows_per_busy_s": f"cache hits {st.get('cache_hits', 0)}, misses {st.get('cache_misses', 0)}"})
    for reason, n in summary["dropped"].items():
        rows.append({"stage": f"dropped: {reason}", "actors": "", "rows": n, "busy_s": "", "rows_per_busy_s": ""})
    create_table_artifact(rows, key="build-summary",
                          description=f"{summary['kept']} of {summary['planned']} kept at {summary['uri']}")
    create_markdown_artifact(
        f"## Dataset at `{summary['uri']}`\n\nkept {summary['kept']} of {summary['planned']} planned, "
        f"{summary['shards']} shards, {summary['seconds']} s.\n\nNext: `magicseg inspect {summary['uri']}` and "
        f"`magicseg preview {summary['uri']} --out preview.png`.", key="build-dataset")
