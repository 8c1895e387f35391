"""The ``magicseg`` command line (see README, "Commands").

Every user mistake (bad config, unknown class, unreachable storage, corrupt shard) ends as one line on stderr
and exit code 2; ``--debug`` shows the traceback instead. Other exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

try:
    from flows.params import refuse_storage_secrets
    from magicseg_models.config import BENCHMARKS
    from flows.progress import progress_callback
except ImportError as _err:  # a library too old for magicseg_models: its one line (what to install), no traceback
    if type(_err).__name__ != "LibraryVersionError":
        raise
    print(f"magicseg: error: {_err}", file=sys.stderr)
    raise SystemExit(2) from None

EXIT_USAGE = 2  # bad input: config, class names, storage, arguments
EXIT_UNHEALTHY = 1  # `inspect` found missing/corrupt/unlisted shards


class CliError(Exception):
    """Raised by the parser instead of printing usage and exiting, so errors stay one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D102 - argparse hook
        raise CliError(f"{self.prog}: {message}")



# ------------------------------------------------------------------------------------------- helpers
def _classes_fields(value: str | None) -> dict:
    """``--classes``: an existing file (or any URL) is a vocabulary file, anything else a comma list."""
    if not value:
        return {}
    if "://" in value or os.path.exists(value):
        return {"vocabulary": {"file": value, "classes": None}}
    names = [n.strip() for n in value.split(",") if n.strip()]
    return {"vocabulary": {"classes": names}}


def load_build_config(args) -> Any:
    from magicseg_models.config import load_config

    fields: dict[str, Any] = {
        "out": getattr(args, "out", None), "num_samples": getattr(args, "num_samples", None),
        "seed": getattr(args, "seed", None), "shard_size": getattr(args, "shard_size", None),
        **_classes_fields(getattr(args, "classes", None) if args.command == "build" else None),
    }
    return load_config("build", args.preset, getattr(args, "config", None), args.set or (), **fields)


def _print_config(config, kind: str) -> None:
    """The effective config on stdout as YAML that ``--config`` takes back unchanged (secrets redacted)."""
    from magicseg_models.config import public_config

    print(f"# effective {kind} config (preset '{config.preset}'); secrets redacted")
    print(_yaml(public_config(config)), end="")


def _check_storage(uri: str, options: dict) -> None:
    """One read at ``uri`` (nothing written): unreachable storage or refused credentials fail here, in one line."""
    from magicseg_models.dataset.storage import Storage

    storage = Storage(uri, options)
    state = "holds a dataset" if storage.exists("manifest.json") else "reachable, no dataset yet"
    print(f"# storage {storage.uri}: {state}", file=sys.stderr)


def _yaml(obj: Any) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False)


# ------------------------------------------------------------------------------------------- commands
def cmd_build(args) -> int:
    from magicseg_models.config import public_config
    from magicseg_models.planning import iter_jobs, plan_summary, spec_from_config
    from magicseg_models.vocabulary import Vocabulary

    config = load_build_config(args)
    vocabulary = Vocabulary.load(config.vocabulary.file, config.vocabulary.classes)
    spec = spec_from_config(config, vocabulary)
    if args.dry_run:
        from magicseg_models.estimate import estimate_build

        _print_config(config, "build")
        print(f"# plan over {vocabulary.source}", file=sys.stderr)
        print(_yaml({"plan": plan_summary(spec)}), end="", file=sys.stderr)
        estimate = estimate_build(config)
        if estimate:
            low, high = estimate["gpu_hours"]
            print(f"# {estimate['samples']} samples: {low}-{high} {estimate['card']} GPU hours, "
                  f"{estimate['pairs_per_gpu_hour'][0]}-{estimate['pairs_per_gpu_hour'][1]} pairs per GPU hour "
                  f"({estimate['basis']})", file=sys.stderr)
        if config.out:
            _check_storage(config.out, config.storage.storage_options)
        return 0
    if not config.out:
        from magicseg_models.errors import ConfigError

        raise ConfigError("magicseg build needs --out URI (a local folder or s3://bucket/prefix)")
    if args.synthetic:
        from magicseg_models.dataset.synthetic import write_synthetic_dataset

        write_synthetic_dataset(
            config.out, iter_jobs(spec), vocabulary.full_names(), selected_classes=vocabulary.names,
            config=public_config(config), storage_options=config.storage.storage_options,
            height=config.generator.height, width=config.generator.width,
        )
        print(f"wrote a synthetic dataset of {spec.num_samples} planned samples to {config.out} "
              "(shapes drawn by code, no models: checks storage, plan, inspect and preview)")
        return 0
    refuse_storage_secrets(config)  # before the flow: its parameters are stored as given
    from flows.build_dataset import build_dataset

    if args.json:
        # stdout holds the JSON alone: whatever else writes to it meanwhile (Ray forwarding its workers' output,
        # libraries that print) goes to stderr
        import contextlib

        with contextlib.redirect_stdout(sys.stderr):
            summary = build_dataset(config=config, overwrite=args.overwrite)
    else:
        summary = build_dataset(config=config, overwrite=args.overwrite)
    if args.json:  # stdout holds the summary alone; logs, progress and everything else go to stderr
        print(json.dumps(summary, default=str))
    else:
        _print_build_summary(summary)
    return 0


def _print_build_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    table = Table("stage", "actors", "rows", "busy s", "rows / busy s", title=f"built {summary['uri']}")
    for name, stage in summary["stages"].items():
        table.add_row(name, str(stage["actors"]), str(stage["rows"]), str(stage["busy_s"]),
                      str(stage["rows_per_busy_s"]))
    console.print(table)
    console.print(f"kept {summary['kept']} of {summary['planned']} planned in {summary['shards']} shards, "
                  f"{summary['seconds']} s; dropped: {summary['dropped'] or 'none'}")
    for note in summary.get("notes", []):
        console.print(f"note: {note}")
    breached = [f for f in summary.get("health", []) if not f["ok"]]
    checked = [f for f in summary.get("health", []) if f["checked"]]
    if checked:
        console.print(f"health: {len(checked) - len(breached)} of {len(checked)} figures within build.health")
    console.print(f"next: magicseg inspect {summary['uri']}   |   "
                  f"magicseg preview {summary['uri']} --out preview.png")


def default_cache_dir() -> str:
    return os.environ.get("MAGICSEG_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "magicseg")


def cmd_prompts(args) -> int:
    from magicseg_models.prompts.cache import PromptCache
    from magicseg_models.prompts.stage import PromptWriter, generator_token_counter
    from magicseg_models.vocabulary import Vocabulary
    from tasks.secrets import llm_api_key

    if args.n < 1:
        from magicseg_models.errors import ConfigError

        raise ConfigError(f"--n must be >= 1, got {args.n}")
    config = load_build_config(args)
    vocabulary = Vocabulary.load(config.vocabulary.file)
    classes = _classes_to_try(vocabulary, args.classes)
    writer = PromptWriter(config.prompts, vocabulary, seed=config.seed,
                          cache=PromptCache(config.prompts.cache or default_cache_dir()),
                          token_counter=generator_token_counter(config.generator), api_key=llm_api_key(config.prompts))
    for item in writer.prompts_for(classes, args.n):
        print(json.dumps(item, ensure_ascii=False))
    stats = writer.stats()
    llm = stats["llm"]
    print(f"magicseg prompts: {stats['backend']} {stats['model']}: llm calls {llm.get('calls', 0)}, "
          f"retries {llm.get('retries', 0)}, tokens {llm.get('prompt_tokens', 0)}/{llm.get('completion_tokens', 0)}, "
          f"cache hits {stats['cache_hits']}, misses {stats['cache_misses']}, rejects {stats['rejects']}, "
          f"outcomes {stats['outcomes']}", file=sys.stderr)
    return 0


def _classes_to_try(vocabulary, names: str) -> list:
    """Vocabulary classes (with their hints) where known; any other name is tried as given."""
    from magicseg_models.errors import AmbiguousClassError, VocabularyError
    from magicseg_models.vocabulary import Vocabulary

    classes = []
    for name in [n.strip() for n in names.split(",") if n.strip()]:
        try:
            classes.append(vocabulary.resolve(name))
        except AmbiguousClassError:
            raise
        except VocabularyError:
            print(f"magicseg prompts: '{name}' is not in {vocabulary.source}; trying it as given", file=sys.stderr)
            classes.append(Vocabulary.from_names([name])[0])
    if not 1 <= len(classes) <= 2:
        from magicseg_models.errors import ConfigError

        raise ConfigError(f"--classes takes 1 or 2 names, got {len(classes)}")
    return classes


def cmd_train(args) -> int:
    from magicseg_models.config import load_config

    config = load_config("train", args.preset, getattr(args, "config", None), args.set or (), data=args.data,
                         out=args.out, steps=args.steps, workers=args.workers, resume=args.resume or None)
    from magicseg_models.training.trainer import check_output

    refuse_storage_secrets(config)
    check_output(config)  # bad data or an occupied --out: one line now, before Prefect and Ray start
    if args.dry_run:
        _print_config(config, "train")
        print(f"# data {config.data} readable; output {config.out} free (or resumable)", file=sys.stderr)
        return 0
    from flows.train import train_flow

    outcome = train_flow(config=config)
    last = outcome.get("last") or {}
    print(f"trained to step {outcome['step']} (loss {last.get('loss')}); checkpoint {outcome['checkpoint']}",
          file=sys.stderr)
    print(f"next: magicseg eval --checkpoint {outcome['out']} --benchmark voc --data-root PATH", file=sys.stderr)
    return 0


def cmd_eval(args) -> int:
    from magicseg_models.config import load_config

    config = load_config("eval", args.preset, getattr(args, "config", None), args.set or (),
                         checkpoint=args.checkpoint, predictions=args.predictions, benchmark=args.benchmark,
                         data_root=args.data_root, limit=args.limit, out=args.out, baseline=args.baseline)
    from magicseg_models.evaluation.readers import open_benchmark

    refuse_storage_secrets(config)
    if not (config.checkpoint or config.predictions or config.baseline):
        from magicseg_models.errors import ConfigError

        raise ConfigError("eval needs --checkpoint URI, --predictions DIR or --baseline grounded-sam")
    # a missing benchmark folder or file: one line now, before Prefect starts
    open_benchmark(config.benchmark, config.data_root, limit=config.limit,
                   prompt_names=config.benchmarks[config.benchmark].prompt_names)
    if config.checkpoint:
        from magicseg_models.training.checkpoints import resolve_checkpoint

        resolve_checkpoint(config.checkpoint, config.storage.storage_options)
    if args.dry_run:
        _print_config(config, "eval")
        print(f"# benchmark {config.benchmark} at {config.data_root} readable", file=sys.stderr)
        return 0
    from flows.evaluate import evaluate_flow

    metrics = evaluate_flow(config=config)
    print(json.dumps({k: metrics[k] for k in ("benchmark", "metric", "miou", "num_images")}))
    if config.out:
        print(f"wrote {config.out.rstrip('/')}/metrics.json", file=sys.stderr)
    return 0


def cmd_inspect(args) -> int:
    from magicseg_models.dataset.inspect import inspect_dataset

    report = inspect_dataset(args.uri, progress=progress_callback("verifying shards") if not args.json else None)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        _print_report(report)
    for problem in report["problems"]:
        print(f"magicseg inspect: {problem}", file=sys.stderr)
    return 0 if report["ok"] else EXIT_UNHEALTHY


def cmd_preview(args) -> int:
    from magicseg_models.dataset.preview import render_preview

    result = render_preview(args.uri, args.out, n=args.n, sort=args.sort)
    order = f", worst {args.sort.removeprefix('-')} first" if args.sort and not args.sort.startswith("-") else \
        f", best {args.sort[1:]} first" if args.sort else ""
    print(f"wrote {result['path']}: {result['rows']} samples{order}")
    return 0


def cmd_export(args) -> int:
    from magicseg_models.dataset.export import export_dataset

    result = export_dataset(args.uri, args.out, args.format, split_counterfactual=args.split_counterfactual,
                            on_shard=progress_callback(f"exporting {args.format}"))
    print(json.dumps(result, indent=1) if args.json else
          f"wrote {args.format} to {result['out']}: {result['shards_exported']} shards exported, "
          f"{result['shards_skipped']} already there")
    return 0


ENV_SHOWN = ("RAY_ADDRESS", "PREFECT_API_URL", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "HF_HOME",
             "HF_HUB_OFFLINE", "MAGICSEG_CACHE", "CUDA_VISIBLE_DEVICES")
ENV_PRESENCE = ("OPENAI_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "PREFECT_API_KEY",
                "PREFECT_API_AUTH_STRING", "HF_TOKEN")  # secrets: only whether they are set


def cmd_env(args) -> int:
    """Versions, devices and the settings in use, for a bug report; never a secret's value."""
    import platform
    from importlib import metadata

    from magicseg_models import __version__
    from magicseg_models.config import redact

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    import torch

    info: dict[str, Any] = {
        "magicseg": __version__, "python": platform.python_version(), "platform": platform.platform(),
        "packages": {name: version(name) for name in ("torch", "torchvision", "diffusers", "transformers", "ray",
                                                      "prefect", "pyarrow", "s3fs", "datasets", "openai",
                                                      "segment-anything", "groundingdino-py")},
        "cuda": {"available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
                 "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]},
        "environment": {name: redact({"v": os.environ[name]})["v"] for name in ENV_SHOWN if os.environ.get(name)},
        "secrets_set": {name: bool(os.environ.get(name)) for name in ENV_PRESENCE},
    }
    if args.json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"magicseg {info['magicseg']}  python {info['python']}  {info['platform']}")
    for name, value in info["packages"].items():
        print(f"  {name:18} {value}")
    cuda = info["cuda"]
    print(f"cuda: {'available' if cuda['available'] else 'not available'} (torch built for {cuda['torch_cuda']})"
          + "".join(f"\n  gpu {i}: {name}" for i, name in enumerate(cuda["devices"])))
    for name, value in info["environment"].items():
        print(f"{name}={value}")
    print("set: " + (", ".join(n for n, v in info["secrets_set"].items() if v) or "none of the secret variables"))
    return 0


def cmd_models(args) -> int:
    """Every model the config(s) will load and whether it is here; exit 1 naming what is missing and its fetch."""
    from magicseg_models.config import KINDS, available_presets, load_config
    from magicseg_models.errors import ConfigError
    from magicseg_models.weights.inventory import HERE, MISSING, list_models

    name = args.preset or "tiny"
    kinds = [args.kind] if args.kind else [k for k in KINDS if name in available_presets(k)]
    if not kinds:
        raise ConfigError(f"unknown preset '{name}'; available: " + "; ".join(
            f"{k}: {', '.join(available_presets(k))}" for k in KINDS))
    if len(kinds) > 1 and (args.config or args.set):
        raise ConfigError(f"preset '{name}' exists for {', '.join(kinds)}: --config/--set need --kind to say which")
    entries = []
    for kind in kinds:
        entries += list_models(load_config(kind, args.preset, args.config, args.set or ()))
    missing = [e for e in entries if e.available == MISSING]
    if args.json:
        print(json.dumps([e.as_dict() for e in entries], indent=1))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table("kind", "role", "source", "format", "dtype", "here", title=f"models of '{name}'")
        for e in entries:
            source = e.source + (f" @ {e.revision}" if e.revision else "")
            style = "green" if e.available == HERE else "red" if e.available == MISSING else "yellow"
            table.add_row(e.kind, e.role, source, e.format, e.dtype, f"[{style}]{e.available}[/]")
        Console(width=200).print(table)
    for line in dict.fromkeys(f"magicseg models: missing {e.role} {e.source} ({', '.join(e.missing)}); fetch: "
                              f"{e.fetch}" for e in missing):
        print(line, file=sys.stderr)
    return EXIT_UNHEALTHY if missing else 0


def _print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    cov = report["coverage"]
    console.print(f"[bold]{report['uri']}[/] schema v{report['schema_version']}, code {report['code_version']}")
    console.print(f"samples {report['samples']} of {report['planned']} planned; dropped {report['dropped_total']}"
                  + "".join(f"\n  {reason}: {n}" for reason, n in report["dropped"].items()))
    console.print(f"per-class samples over {cov['classes']} classes: min {cov['min']}, median {cov['median']}, "
                  f"max {cov['max']}; classes with none: {len(cov['classes_with_none'])}")
    top = list(report["per_class"].items())
    if top:
        console.print("  " + ", ".join(f"{name} {count}" for name, count in top[:12])
                      + (" ..." if len(top) > 12 else ""))
    table = Table("shard", "rows", "bytes", "status")
    for shard in report["shards"]:
        style = "green" if shard["status"] == "ok" else "red"
        table.add_row(shard["path"], str(shard["rows"]), str(shard["bytes"]), f"[{style}]{shard['status']}[/]")
    console.print(table)
    _print_scores(console, report["scores"])
    console.print("[green]healthy[/]" if report["ok"] else f"[red]{len(report['problems'])} problem(s)[/]")


def _print_scores(console, scores: dict) -> None:
    from rich import box
    from rich.table import Column, Table

    from magicseg_models.dataset.inspect import SCORES

    columns = ("min", "p10", "median", "p90", "max", "mean")  # --json has the quartiles too
    headers = [Column("score", min_width=len(max(SCORES, key=len)), no_wrap=True)] + [
        Column(name, min_width=len(name), no_wrap=True) for name in ("values", "null", *columns)]
    table = Table(*headers, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
                  title="quality scores (samples; mask scores per annotation)")
    for name in SCORES:
        score = scores[name]
        if score["status"] != "ok":
            table.add_row(name, str(score["values"]), str(score["null"]), f"[yellow]{score['status']}[/]",
                          *[""] * (len(columns) - 1))
            continue
        table.add_row(name, str(score["values"]), str(score["null"]), *[f"{score[key]:.2f}" for key in columns])
    console.print(table)
    context = scores["context_annotations"]
    console.print(f"context-class annotations (asked=false): "
                  f"{context['count'] if context['status'] == 'ok' else context['status']}")


# ------------------------------------------------------------------------------------------- parser
class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Examples and environment lists keep their lines; options show their defaults where they have one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.option_strings and action.default not in (None, False, argparse.SUPPRESS)
                and "%(default)" not in text and "default" not in text):
            text += " (default: %(default)s)"
        return text


STORAGE_ENV = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL / AWS_DEFAULT_REGION  object storage"
RUN_ENV = ("RAY_ADDRESS       a Ray cluster to join (else a local Ray for the run)\n"
           "  PREFECT_API_URL   a Prefect server (else Prefect's local mode)")
MODEL_ENV = ("HF_HOME / HF_HUB_OFFLINE  the Hugging Face cache, and offline use of it\n"
             "  MAGICSEG_CACHE    checkpoints fetched from URLs, prompt caches (default ~/.cache/magicseg)")


def _epilog(examples: list[str], env: list[str]) -> str:
    return ("examples:\n" + "".join(f"  {line}\n" for line in examples)
            + "\nenvironment:\n" + "".join(f"  {line}\n" for line in env))


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of config keys (over the preset)")
    p.add_argument("--set", action="append", metavar="key.path=value",
                   help="override one config key (repeatable), e.g. --set generator.steps=30")


def build_parser() -> argparse.ArgumentParser:
    from magicseg_models import __version__
    from magicseg_models.config import available_presets

    parser = _Parser(prog="magicseg", formatter_class=_HelpFormatter,
                     description="MagicSeg data factory: build open-world segmentation data from class names, "
                     "train ZegCLIP on it, evaluate it.",
                     epilog="`magicseg COMMAND --help` shows each command's options, examples and environment.")
    parser.add_argument("--version", action="version", version=f"magicseg {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    # --debug after the subcommand too; SUPPRESS keeps a subcommand from resetting one given before it
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, help: str, examples: list[str], env: list[str], **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=kwargs.pop("description", help), parents=[common],
                              formatter_class=_HelpFormatter, epilog=_epilog(examples, env), **kwargs)

    p = command("build", "build a dataset (Prefect flow on Ray)", [
        "magicseg build --preset tiny --out out/demo",
        "magicseg build --preset sd15 --out s3://bucket/run1 --num-samples 100000 --classes cat,dog,bus",
        "magicseg build --preset sd15 --out s3://bucket/run1 --dry-run > run1.yaml   # config, plan, GPU hours",
        "magicseg build --config run1.yaml --json",
    ], [RUN_ENV, STORAGE_ENV, "OPENAI_API_KEY    the LLM key when prompts.api_key_secret names no Prefect Secret",
        MODEL_ENV])
    p.add_argument("--out", metavar="URI", help="dataset URI: a folder, file://..., s3://bucket/prefix")
    p.add_argument("--preset", choices=available_presets("build"), help="build preset (default: tiny)")
    p.add_argument("--num-samples", type=int, metavar="N")
    p.add_argument("--classes", metavar="FILE|a,b,c", help="vocabulary file, or names to select from the 1205")
    p.add_argument("--seed", type=int)
    p.add_argument("--shard-size", type=int, metavar="K")
    _add_overrides(p)
    p.add_argument("--dry-run", action="store_true",
                   help="print the effective config on stdout (--config takes it back); plan, GPU-hour estimate "
                   "and a storage check on stderr; nothing is written")
    p.add_argument("--synthetic", action="store_true",
                   help="write synthetic shapes instead of running models (checks storage and tooling)")
    p.add_argument("--overwrite", action="store_true",
                   help="start again at a URI built with a different config (deletes its shards)")
    p.add_argument("--json", action="store_true",
                   help="print the run summary as JSON on stdout (counts, stages, rows per node, notes, health)")
    p.set_defaults(func=cmd_build)

    p = command("prompts", "try the prompt stage: N prompt pairs for one class set, JSON lines out", [
        "magicseg prompts --classes cat,sofa --n 5 --preset sd15",
    ], ["OPENAI_API_KEY    the LLM key (or prompts.api_key_secret)", MODEL_ENV])
    p.add_argument("--classes", required=True, metavar="a,b", help="1-2 class names of the vocabulary")
    p.add_argument("--n", type=int, default=5, help="how many prompts")
    p.add_argument("--preset", choices=available_presets("build"),
                   help="build preset whose prompts section is used (default: tiny)")
    p.add_argument("--seed", type=int)
    _add_overrides(p)
    p.set_defaults(func=cmd_prompts)

    p = command("inspect", "counts, per-class coverage, drop reasons, shard health",
                ["magicseg inspect out/demo", "magicseg inspect s3://bucket/run1 --json"], [STORAGE_ENV])
    p.add_argument("uri", metavar="URI")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_inspect)

    p = command("preview", "PNG grid: image | counterfactual | masks with class names",
                ["magicseg preview out/demo --out preview.png --n 8",
                 "magicseg preview out/demo --out worst.png --sort clip_score"], [STORAGE_ENV])
    p.add_argument("uri", metavar="URI")
    p.add_argument("--out", required=True, metavar="FILE.png")
    p.add_argument("--n", type=int, default=16, help="samples in the grid")
    p.add_argument("--sort", metavar="SCORE", help="the n worst samples by a score instead of the first n: "
                   "clip_score, predicted_iou, stability_score, box_fill (lowest first; a mask score counts the "
                   "sample's worst mask) or counterfactual_score (highest first); -SCORE for best first")
    p.set_defaults(func=cmd_preview)

    p = command("export", "the dataset as COCO instances, semantic label maps or WebDataset tars", [
        "magicseg export out/demo --format coco --out exports/coco",
        "magicseg export s3://bucket/run1 --format semantic --out exports/sem --split-counterfactual",
    ], [STORAGE_ENV], description="Streams shard by shard; a rerun skips shards already exported. Formats: coco "
        "(images/ + annotations/instances.json), semantic (images/, labels/*.png, classes.txt; 0 = background, "
        "class id + 1), webdataset (one .tar per shard). docs/dataset-format.md has the layouts.")
    p.add_argument("uri", metavar="URI")
    p.add_argument("--format", required=True, choices=["coco", "semantic", "webdataset"])
    p.add_argument("--out", required=True, metavar="DIR", help="a local folder or s3://bucket/prefix")
    p.add_argument("--split-counterfactual", action="store_true",
                   help="each counterfactual image as a sample of its own, all background")
    p.add_argument("--json", action="store_true", help="print what was written as JSON")
    p.set_defaults(func=cmd_export)

    p = command("models", "every model a config loads, where from, and whether it is here (offline)",
                ["magicseg models --preset sd15", "magicseg models --preset zegclip-vitb16 --kind train --json"],
                [MODEL_ENV])
    p.add_argument("--preset", help="preset name (default: tiny); without --kind, every config kind that has it")
    p.add_argument("--kind", choices=["build", "train", "eval"], help="which config kind the preset/--set are of")
    _add_overrides(p)
    p.add_argument("--json", action="store_true", help="print the list as JSON")
    p.set_defaults(func=cmd_models)

    p = command("env", "versions, GPUs and the settings in use, for a bug report (never a secret)",
                ["magicseg env", "magicseg env --json"], ["prints RAY_ADDRESS, PREFECT_API_URL, AWS_ENDPOINT_URL, "
                                                          "HF_HOME, MAGICSEG_CACHE; of secrets only whether set"])
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=cmd_env)

    p = command("train", "train ZegCLIP on a dataset (Ray Train)", [
        "magicseg train --data out/demo --out out/train --preset tiny",
        "magicseg train --data s3://bucket/run1 --out s3://bucket/train1 --preset zegclip-vitb16 --workers 8",
        "magicseg train --data s3://bucket/run1 --out s3://bucket/train1 --resume",
    ], [RUN_ENV, STORAGE_ENV, MODEL_ENV, "MAGICSEG_RAY_STORAGE  Ray Train's own run folder"])
    p.add_argument("--data", required=True, metavar="URI", help="a dataset URI that `magicseg build` wrote")
    p.add_argument("--out", required=True, metavar="URI", help="checkpoints, metrics.jsonl and the loss curve")
    p.add_argument("--preset", choices=available_presets("train"), help="train preset (default: tiny)")
    p.add_argument("--steps", type=int, help="training iterations (the preset's otherwise)")
    p.add_argument("--workers", type=int, help="Ray Train workers, one GPU each where GPUs can be had")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint under --out")
    _add_overrides(p)
    p.add_argument("--dry-run", action="store_true",
                   help="print the effective config; check data and output; train nothing")
    p.set_defaults(func=cmd_train)

    p = command("eval", "evaluate a checkpoint (or saved predictions) on a benchmark", [
        "magicseg eval --checkpoint out/train --benchmark voc --data-root data/VOCdevkit/VOC2012",
        "magicseg eval --baseline grounded-sam --benchmark coco-object --data-root data/coco --limit 100",
    ], ["PREFECT_API_URL   a Prefect server (else Prefect's local mode)", STORAGE_ENV, MODEL_ENV])
    p.add_argument("--checkpoint", metavar="URI", help="a training --out (its latest checkpoint) or one checkpoint")
    p.add_argument("--predictions", metavar="DIR", help="score saved label PNGs instead of running a model")
    p.add_argument("--baseline", choices=["grounded-sam"], help="evaluate Grounding DINO + SAM instead of a model")
    p.add_argument("--benchmark", required=True, choices=BENCHMARKS)
    p.add_argument("--data-root", required=True, metavar="PATH", help="the benchmark's folder (docs/evaluation.md)")
    p.add_argument("--limit", type=int, metavar="N", help="evaluate the first N images only")
    p.add_argument("--out", metavar="URI", help="where metrics.json and the per-class table go")
    p.add_argument("--preset", choices=available_presets("eval"), help="eval preset (default: tiny)")
    _add_overrides(p)
    p.add_argument("--dry-run", action="store_true",
                   help="print the effective config; check the benchmark and checkpoint; evaluate nothing")
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Prefect's local mode starts a server that would phone home (and log an error on offline clusters); a user
    # who wants telemetry sets the variable
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    debug = "--debug" in argv
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help()
            return EXIT_USAGE
        return args.func(args)
    except CliError as err:
        print(f"{err} (see --help)", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:  # noqa: BLE001 - user errors become one line; bugs keep their traceback
        from magicseg_models.errors import MagicSegError

        if debug or not isinstance(err, MagicSegError):
            raise
        print(f"magicseg: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("magicseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
