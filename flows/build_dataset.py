"""Prefect flow ``build-dataset``: plan -> prompts -> image pairs -> annotations -> shards + manifest.

Prefect is the control plane: one task run per chunk of shards (``tasks.build_tasks.build_shards``, the unit of
retry and of visibility), the stages' own log records and one line per committed shard in the run's log, a live
progress artifact, and at the end a summary table (health figures included) and the preview grid. Ray is the
compute plane: the executor's actors hold the stage models for the whole run. ``build.health`` is checked before
each shard commits; a breach fails the run in one line. Resumable: shards with a commit record are skipped, so a
rerun after any kill does only what is missing; a larger ``num_samples`` only adds jobs.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact, \
    update_progress_artifact
from prefect.events import emit_event
from prefect.runtime import flow_run
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote

from flows.artifacts import picture_artifact
from flows.params import BuildPreset, resolve_config
from flows.progress import TerminalProgress
from magicseg_models.config import BuildConfig, config_differences, public_config
from magicseg_models.dataset.store import DatasetStore
from magicseg_models.errors import ConfigError, MagicSegError, one_line
from magicseg_models.planning import PlanSpec, num_shards, plan_shard, spec_from_config
from magicseg_models.vocabulary import Vocabulary
from tasks.build_tasks import RunProgress, RunStopped, build_shards, prompt_outcomes

COMPLETED_EVENT = "magicseg.dataset.completed"  # prefect.yaml's train/adhoc trigger listens for it
PREVIEW_FILE = "preview.png"  # under the dataset URI: the grid the preview artifact links to


def check_rerun(store: DatasetStore, config: BuildConfig, overwrite: bool) -> None:
    header = store.read_run_header()
    if header is None:
        return
    if overwrite:
        for rel in store.storage.list("_magicseg/commits"):
            store.storage.remove(f"_magicseg/commits/{rel}")
        for rel in store.storage.list("shards"):
            store.storage.remove(f"shards/{rel}")
        return
    differing = config_differences(_with_new_defaults(header.get("config", {})), public_config(config))
    if differing:
        raise ConfigError(f"{store.uri} was built with a different config ({', '.join(differing[:6])}"
                          f"{' ...' if len(differing) > 6 else ''}); use another --out, or --overwrite")
    old_planned = int(header.get("planned", 0))
    if config.num_samples < old_planned:
        raise ConfigError(f"{store.uri} already plans {old_planned} samples; num_samples={config.num_samples} "
                          "would shrink it (use --overwrite to start again)")


def _with_new_defaults(old: dict) -> dict:
    """A run header's config with the fields added to the schema since then at their defaults, so a newer
    release resumes an older dataset unless a value that exists in both really differs."""
    from pydantic import ValidationError

    try:
        return public_config(BuildConfig.model_validate(old))
    except ValidationError:  # a header this release cannot read: compare it as written
        return old


@flow(name="build-dataset", task_runner=ThreadPoolTaskRunner(max_workers=4), log_prints=True,
      validate_parameters=True)
def build_dataset(config: BuildConfig | None = None, preset: BuildPreset | None = None, out: str | None = None,
                  num_samples: int | None = None, seed: int | None = None, overwrite: bool = False,
                  out_root: str | None = None) -> dict:
    """Build (or resume, or grow) the dataset at ``out``. Returns the run summary.

    ``out_root`` (scheduled runs): without ``out``, the dataset goes to ``out_root/YYYY-MM-DD`` of the run's
    scheduled date, and an unset ``seed`` becomes that date (``YYYYMMDD``), so each night builds new samples and a
    retry or late start of the same night resumes the same URI.

    Args:
        config: a whole build config (every key of docs/configuration.md); overrides the preset when given.
        preset: the preset to start from: sd15 (the paper's setup), sd15-random (GPU throughput, random
            weights), tiny (CPU plumbing test).
        out: dataset URI (a folder or s3://bucket/prefix); a rerun resumes it.
        num_samples: planned samples; a larger number grows an existing dataset.
        seed: plan seed (classes, prompts, noise); unset with out_root: the scheduled date.
        overwrite: start again at a URI built with a different config (deletes its shards).
        out_root: for scheduled runs without out: the dataset goes to out_root/YYYY-MM-DD.
    """
    import ray

    from tasks.executor import RayExecutor
    from tasks.lock import BuildLock
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
        check_rerun(store, config, overwrite)
        done = store.committed()
        todo = [s for s in range(num_shards(spec)) if not plan_shard(spec, s).is_complete(done.get(s))]
        logger.info("%d of %d shards to build at %s", len(todo), num_shards(spec), store.uri)
        progress = RunProgress(config.health)
        if not todo:
            # a complete dataset: starting every stage's actors (minutes with real models, on a GPU the
            # cluster may have to scale up for) would only load models to process nothing
            notes = [f"nothing to build: all {num_shards(spec)} planned shards are committed; no stage was started"]
            logger.info(notes[0])
            stats: dict = {}
        else:
            started_ray = ensure_ray(config.ray)
            api_key = llm_api_key(config.prompts) if config.prompts.backend == "openai" else None
            executor = RayExecutor(build_stages(config, api_key), on_log=_stage_log(logger), ray_config=config.ray)
            try:
                notes = executor.start()
                for note in notes:  # a changed run (e.g. a GPU stage on CPU) is said where the run is read
                    logger.warning(note)
                settings = executor.settings()  # provenance from the stages themselves
                store.write_run_header(config=public_config(config), planned=spec.num_samples,
                                       classes=vocabulary.full_names(), selected_classes=vocabulary.names,
                                       models=settings)
                _run_chunks(config, spec, store, executor, settings, progress, todo, began)
                stats = executor.stats()
            finally:
                executor.shutdown()
                if started_ray:
                    ray.shutdown()
        manifest = store.refresh_manifest()
    summary = _summary(store, manifest, stats, time.perf_counter() - began, notes,
                       [f.as_dict() for f in progress.figures(prompt_outcomes(stats))])
    _final_artifacts(summary, store, config)
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


def _stage_log(logger: logging.LoggerAdapter):
    """The executor's ``on_log``: a record raised inside a stage worker goes to the flow run's log at its level."""
    def log(stage: str, levelno: int, message: str) -> None:
        logger.log(levelno, "[%s] %s", stage, message)

    return log


def _run_chunks(config: BuildConfig, spec: PlanSpec, store: DatasetStore, executor, settings: dict,
                progress: RunProgress, todo: list[int], began: float) -> None:
    """One task run per chunk of shards; stops at the first chunk that fails (health, bad input, retries spent)."""
    size = config.shards_per_task
    chunks = [todo[i:i + size] for i in range(0, len(todo), size)]
    planned_rows = sum(plan_shard(spec, s).planned for s in todo)
    progress_id = create_progress_artifact(0.0, key="build-progress", description="planned / done / kept / dropped")
    futures = [build_shards.submit(chunk, spec, quote(store), quote(executor), quote(settings), quote(progress))
               for chunk in chunks]
    with TerminalProgress("building samples", total=planned_rows) as bar:
        try:
            while not all(f.state.is_final() for f in futures) and not any(f.state.is_failed() for f in futures):
                _wait_for_next(futures, timeout=1.0)  # a second between progress reports, or less
                _report(progress_id, bar, progress, planned_rows, began)
            failure = _cause(futures)
            if failure is not None:
                raise failure  # fails the flow run; committed shards stay
            for f in futures:
                f.result()
        except BaseException as err:
            progress.stop(one_line(err))
            if isinstance(err, MagicSegError):
                _health_table(progress.figures(prompt_outcomes(_stats_if_alive(executor))), failed=str(err))
            raise
        _report(progress_id, bar, progress, planned_rows, began)


def _wait_for_next(futures, timeout: float) -> None:
    """Until the first unfinished chunk ends, or ``timeout``. The last chunk may end between the caller's check and
    this call: then there is nothing to wait for, and it returns at once."""
    pending = next((f for f in futures if not f.state.is_final()), None)
    if pending is not None:
        pending.wait(timeout=timeout)


def _cause(futures) -> BaseException | None:
    """The error of a failed chunk, preferring the cause over the chunks that stopped because of it."""
    errors = []
    for f in futures:
        if f.state.is_failed():
            try:
                f.result()
            except Exception as err:  # noqa: BLE001 - collected, the cause is raised by the caller
                errors.append(err)
    return next((e for e in errors if not isinstance(e, RunStopped)), errors[0] if errors else None)


def _stats_if_alive(executor) -> dict:
    """Stage stats for a failure report; a failure that took the actors with it must still show its own error."""
    try:
        return executor.stats()
    except Exception:  # noqa: BLE001
        return {}


def _report(progress_id, bar: TerminalProgress, progress: RunProgress, planned_rows: int, began: float) -> None:
    done = progress.rows
    rate = done / max(time.perf_counter() - began, 1e-9)
    update_progress_artifact(progress_id, 100.0 * done / max(planned_rows, 1),
                             description=f"planned {planned_rows}, done {done}, kept {progress.kept}, "
                                         f"dropped {progress.dropped}, {rate:.2f} samples/s")
    bar.update(done, info=f"kept {progress.kept} dropped {progress.dropped} {rate:.2f}/s")


def _summary(store: DatasetStore, manifest: dict, stats: dict, seconds: float, notes: list[str],
             health: list[dict]) -> dict:
    """The run summary (what ``magicseg build --json`` prints): counts, per-stage figures, rows per Ray node,
    notes, and every health figure against its limit."""
    counts = manifest["counts"]
    stages = {}
    nodes: dict[str, int] = {}  # rows per Ray node over every stage: where a multi-node cluster put the work
    for name, actors in stats.items():
        busy = sum(a["busy_s"] for a in actors)
        stage_nodes: dict[str, int] = {}
        for actor in actors:
            stage_nodes[actor["node_id"]] = stage_nodes.get(actor["node_id"], 0) + actor["rows"]
            nodes[actor["node_id"]] = nodes.get(actor["node_id"], 0) + actor["rows"]
        rows = sum(a["rows"] for a in actors)
        stages[name] = {"actors": len(actors), "rows": rows, "busy_s": round(busy, 3),
                        "rows_per_busy_s": round(rows / busy, 3) if busy else None,
                        "nodes": stage_nodes, "gpu": [a.get("gpu") for a in actors],
                        "stage": [a["stage"] for a in actors]}
    return {"uri": store.uri, "planned": counts["planned"], "kept": counts["kept"], "dropped": counts["dropped"],
            "shards": len(manifest["shards"]), "seconds": round(seconds, 2), "stages": stages, "nodes": nodes,
            "notes": list(notes), "health": health}


def _health_table(figures: list, failed: str | None = None) -> None:
    rows = [{"figure": f.name, "value": "n/a" if f.value is None else round(f.value, 4),
             "limit": f"{'<=' if f.bound == 'max' else '>='} {f.limit}",
             "status": ("ok" if f.ok else "BREACHED") if f.checked else "not checked yet"} for f in figures]
    create_table_artifact(rows or [{"figure": "(build.health has no figures)"}], key="build-health",
                          description=failed or "run health against build.health")


def _final_artifacts(summary: dict, store: DatasetStore, config: BuildConfig) -> None:
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
    for figure in summary["health"]:
        rows.append({"stage": f"health: {figure['figure']}", "actors": "", "rows": figure["value"],
                     "busy_s": f"{'<=' if figure['bound'] == 'max' else '>='} {figure['limit']}",
                     "rows_per_busy_s": ("ok" if figure["ok"] else "BREACHED") if figure["checked"]
                     else "not checked"})
    create_table_artifact(rows, key="build-summary",
                          description=f"{summary['kept']} of {summary['planned']} kept at {summary['uri']}")
    notes = "".join(f"\n- {note}" for note in summary["notes"])
    create_markdown_artifact(
        f"## Dataset at `{summary['uri']}`\n\nkept {summary['kept']} of {summary['planned']} planned, "
        f"{summary['shards']} shards, {summary['seconds']} s.{notes and chr(10) + chr(10) + 'Notes:' + notes}"
        f"\n\nNext: `magicseg inspect {summary['uri']}` and "
        f"`magicseg preview {summary['uri']} --out preview.png`.", key="build-dataset")
    _preview_artifact(summary, store, config)


def _preview_artifact(summary: dict, store: DatasetStore, config: BuildConfig) -> None:
    """The preview grid, saved under the dataset URI, in a markdown artifact that shows it and names the URI.

    A presigned URL would be a secret in an artifact, so the grid lives next to the data it shows and the artifact
    links it (flows/artifacts.py)."""
    if not summary["kept"]:
        return
    from magicseg_models.dataset.preview import render_preview

    uri = f"{summary['uri'].rstrip('/')}/{PREVIEW_FILE}"
    grid = render_preview(summary["uri"], uri, n=8, storage_options=config.storage.storage_options)
    picture_artifact(uri, key="build-preview", title=f"Preview of {summary['uri']}",
                     caption=f"{grid['rows']} samples, {grid['size'][0]}x{grid['size'][1]} px (image | "
                     "counterfactual | masks with class names).", description=f"preview grid of {summary['uri']}")
