"""End to end on a real Prefect server: prefect.yaml deployed, a process worker, and the event chain
build-dataset -> train -> evaluate with the tiny presets into a temp folder (issue #9).

What runs, all on 127.0.0.1 with a temp PREFECT_HOME (SQLite) and nothing from the network:

1. ``prefect server start`` (its UI included), Prefect Variables for the roots prefect.yaml reads
   (``magicseg_dataset_root``, ``magicseg_voc_root``) and the process work pool ``magicseg`` (through the API),
   ``prefect --no-prompt deploy --all`` from the repository root (the real prefect.yaml), then the deployments'
   ``preset`` defaults set to ``tiny`` (train's ``steps`` to 2) through the API and the nightly schedule paused
   (so a test that runs at 02:00 UTC does not start an sd15 build);
2. ``prefect worker start --pool magicseg``;
3. ``prefect deployment run build-dataset/scheduled --param num_samples=8`` without ``out``: the build goes to
   ``<magicseg_dataset_root>/<UTC date of its scheduled start>`` and emits ``magicseg.dataset.completed``; the
   trigger on ``train/adhoc`` starts the training run, whose ``magicseg.training.completed`` starts
   ``evaluate/adhoc`` on a tiny VOC-layout folder written here;
4. asserted through the Prefect client: all three runs COMPLETED, the triggered ones with the parameters the
   triggers render, the build's artifacts, and the files each stage writes;
5. a headless Chromium screenshot of the build's flow run page and ``--dump-dom`` showing its run name (skipped
   only when no ``chromium`` is on PATH; CI gets it from Debian's ``chromium`` package).

It needs flows/train.py and flows/evaluate.py (issues #7, #8) and fails at once, naming what is missing, until
they exist. About 3-5 minutes on a 2-core machine.
"""

from __future__ import annotations

import ast
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect") if (BIN / "prefect").exists() else shutil.which("prefect") or "prefect"
CHAIN_TIMEOUT_S = 900

pytestmark = [pytest.mark.slow, pytest.mark.timeout(CHAIN_TIMEOUT_S + 300)]


# ------------------------------------------------------------------------------------------- the stack
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrefectStack:
    """A Prefect server and a process worker as subprocesses (own sessions), and the CLI against them."""

    def __init__(self, tmp: Path, workdir: Path):
        self.tmp = tmp
        self.workdir = workdir
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_url = f"{self.url}/api"
        # the commands of prefect.yaml as written, with no extra environment: no MAGICSEG_WORKDIR either
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "RAY_", "MAGICSEG_WORKDIR"))
               or k == "PREFECT_SERVER_ANALYTICS_ENABLED"}
        env.update({
            "PREFECT_HOME": str(tmp / "prefect-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(self.port),
            # how often the worker asks for scheduled runs: each run of the chain waits for the next poll
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_LOGGING_LEVEL": "INFO",
            "HF_HUB_OFFLINE": "1",
            "PYTHONUNBUFFERED": "1",
        })
        self.server_env = env
        self.env = {**env, "PREFECT_API_URL": self.api_url}
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    # -- processes
    def _spawn(self, name: str, args: list[str], env: dict) -> None:
        log = self.tmp / f"{name}.log"
        self.logs[name] = log
        self.procs[name] = subprocess.Popen(args, cwd=self.workdir, env=env, stdout=log.open("wb"),
                                            stderr=subprocess.STDOUT, start_new_session=True)

    def start_server(self, timeout: float = 120) -> None:
        import httpx

        self._spawn("server", [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)],
                    self.server_env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs["server"].poll() is not None:
                raise AssertionError(f"prefect server exited early:\n{self.tail('server')}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.5)
        raise AssertionError(f"prefect server not healthy after {timeout} s:\n{self.tail('server')}")

    def start_worker(self) -> None:
        self._spawn("worker", [PREFECT, "worker", "start", "--pool", "magicseg", "--type", "process"], self.env)

    def cli(self, *args: str, timeout: float = 300) -> str:
        done = subprocess.run([PREFECT, *args], cwd=self.workdir, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == 0, f"prefect {' '.join(args)} failed ({done.returncode}):\n" \
                                     f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done.stdout

    def stop(self) -> None:
        # the worker first, with SIGINT: a worker whose server is gone may ignore SIGTERM
        for name, sig in (("worker", signal.SIGINT), ("server", signal.SIGTERM)):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def tail(self, name: str, chars: int = 6000) -> str:
        log = self.logs.get(name)
        return log.read_text(errors="replace")[-chars:] if log and log.exists() else f"(no {name} log)"

    # -- the API
    @contextlib.contextmanager
    def client(self):
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.api_url}):
            with get_client(sync_client=True) as client:
                yield client


# ------------------------------------------------------------------------------------------- fixtures
def _write_tiny_voc(root: Path, n: int = 2) -> None:
    """A PASCAL VOC 2012 layout (JPEGImages, SegmentationClass palette PNGs, ImageSets/Segmentation/val.txt)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    ids = [f"2007_{i:06d}" for i in range(n)]
    palette = [0] * 768
    palette[15 * 3:15 * 3 + 3] = [192, 128, 128]  # person
    palette[255 * 3:255 * 3 + 3] = [224, 224, 192]  # border (ignored)
    for sid in ids:
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(root / "JPEGImages" / f"{sid}.jpg")
        label = np.zeros((64, 80), dtype=np.uint8)
        label[16:48, 20:60] = 15
        label[15, 20:60] = 255
        png = Image.fromarray(label, mode="P")
        png.putpalette(palette)
        png.save(root / "SegmentationClass" / f"{sid}.png")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(ids) + "\n")


def _missing_flows() -> list[str]:
    missing = []
    for path, func in (("flows/train.py", "train_flow"), ("flows/evaluate.py", "evaluate_flow")):
        file = ROOT / path
        if not file.exists():
            missing.append(f"{path} (function {func})")
        elif func not in {n.name for n in ast.walk(ast.parse(file.read_text())) if isinstance(n, ast.FunctionDef)}:
            missing.append(f"{func} in {path}")
    return missing


def _wait(what: str, predicate, stack: PrefectStack, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        for name in ("server", "worker"):
            if stack.procs[name].poll() is not None:
                raise AssertionError(f"{name} exited while waiting for {what}:\n{stack.tail(name)}")
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n--- worker log ---\n"
                         f"{stack.tail('worker')}\n--- server log ---\n{stack.tail('server', 3000)}")


@pytest.fixture(scope="module")
def chain(tmp_path_factory, migrated_prefect_home):
    missing = _missing_flows()
    if missing:
        pytest.fail("the deployment chain needs " + ", ".join(missing) + " (prefect.yaml names them); "
                    "this test passes once they exist")
    tmp = tmp_path_factory.mktemp("prefect-e2e")
    datasets, voc = tmp / "datasets", tmp / "voc"
    _write_tiny_voc(voc)
    shutil.copytree(migrated_prefect_home, tmp / "prefect-home")  # migrated: the server starts sooner
    stack = PrefectStack(tmp, ROOT)
    began = time.monotonic()
    try:
        stack.start_server()
        _variables_and_pool(stack, {"magicseg_dataset_root": str(datasets), "magicseg_voc_root": str(voc)})
        stack.cli("--no-prompt", "deploy", "--all", timeout=600)
        deployments = _tiny_deployments(stack)
        stack.start_worker()
        stack.cli("deployment", "run", "build-dataset/scheduled", "--param", "num_samples=8")
        runs = _follow_chain(stack, deployments, timeout=CHAIN_TIMEOUT_S - (time.monotonic() - began))
        yield {"stack": stack, "deployments": deployments, "runs": runs, "datasets": datasets, "voc": voc}
    finally:
        stack.stop()


def _variables_and_pool(stack: PrefectStack, variables: dict[str, str]) -> None:
    """What ``prefect variable set`` and ``prefect work-pool create --type process`` do, through the API: each CLI
    call would cost a Python start-up and Prefect's imports."""
    from prefect.client.schemas.actions import VariableCreate, WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    with stack.client() as client:
        for name, value in variables.items():
            client.create_variable(VariableCreate(name=name, value=value))
        client.create_work_pool(WorkPoolCreate(name="magicseg", type="process",
                                               base_job_template=ProcessWorker.get_default_base_job_template()))


# the tiny train preset's 4 steps checkpoint twice; one checkpoint is all evaluate/adhoc needs
TINY_DEFAULTS = {"train/adhoc": {"steps": 2}}


def _tiny_deployments(stack: PrefectStack) -> dict:
    """Read the three deployments back, set their preset defaults to tiny (and train's steps to 2) and pause the
    nightly schedule."""
    from prefect.client.schemas.actions import DeploymentUpdate

    found = {}
    with stack.client() as client:
        for name in ("build-dataset/scheduled", "train/adhoc", "evaluate/adhoc"):
            dep = client.read_deployment_by_name(name)
            assert dep.work_pool_name == "magicseg", (name, dep.work_pool_name)
            parameters = {**dep.parameters, "preset": "tiny", **TINY_DEFAULTS.get(name, {})}
            client.update_deployment(dep.id, DeploymentUpdate(parameters=parameters))
            found[name] = client.read_deployment(dep.id)
        for schedule in client.read_deployment_schedules(found["build-dataset/scheduled"].id):
            client.update_deployment_schedule(found["build-dataset/scheduled"].id, schedule.id, active=False)
    return found


def _runs_of(stack: PrefectStack, deployment) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with stack.client() as client:
        return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))


def _final(stack: PrefectStack, deployment, what: str, timeout: float):
    def done():
        runs = _runs_of(stack, deployment)
        for run in runs:
            if run.state is not None and run.state.is_final():
                return run
        return None

    run = _wait(what, done, stack, timeout)
    assert run.state.is_completed(), f"{what}: {run.state.type.value} {run.state.message}\n{stack.tail('worker')}"
    return run


def _follow_chain(stack: PrefectStack, deployments: dict, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    runs = {}
    for name in ("build-dataset/scheduled", "train/adhoc", "evaluate/adhoc"):
        runs[name] = _final(stack, deployments[name], f"a final state of a {name} run",
                            max(deadline - time.monotonic(), 10))
    return runs


# ------------------------------------------------------------------------------------------- the tests
def test_a_build_triggers_training_and_training_triggers_evaluation(chain):
    build, train, evaluate = (chain["runs"][n] for n in ("build-dataset/scheduled", "train/adhoc", "evaluate/adhoc"))
    # the dated default out: <magicseg_dataset_root>/<UTC date of the build's scheduled start>
    day = build.expected_start_time.astimezone(dt.timezone.utc)
    out = f"{chain['datasets']}/{day:%Y-%m-%d}"
    manifest = json.loads(Path(out, "manifest.json").read_text())
    assert manifest["counts"]["planned"] == 8
    assert manifest["config"]["seed"] == int(f"{day:%Y%m%d}"), "seed null -> derived from the run date"

    # train/adhoc was started by its trigger, with the parameters the trigger renders from the event
    assert train.parameters["data"] == out
    assert train.parameters["out"] == f"{out}/train/{build.id}"
    assert train.parameters["resume"] is True
    assert train.parameters["preset"] == "tiny" and train.parameters["steps"] == 2
    assert (train.created_by.type, train.created_by.display_value) == ("AUTOMATION", "train-on-dataset-completed")
    train_out = Path(train.parameters["out"])
    assert (train_out / "metrics.jsonl").exists(), sorted(p.name for p in train_out.iterdir())

    # evaluate/adhoc likewise, on the checkpoint the training run reported
    assert evaluate.parameters["checkpoint"].startswith(str(train_out))
    assert evaluate.parameters["out"] == f"{train_out}/eval/voc"
    assert evaluate.parameters["benchmark"] == "voc"
    assert evaluate.parameters["data_root"] == str(chain["voc"])
    assert evaluate.created_by.type == "AUTOMATION"
    metrics = json.loads(Path(evaluate.parameters["out"], "metrics.json").read_text())
    assert metrics["benchmark"] == "voc" and "miou" in metrics


def test_the_build_run_has_its_artifacts_and_emitted_its_event(chain):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    stack, build = chain["stack"], chain["runs"]["build-dataset/scheduled"]
    with stack.client() as client:
        artifacts = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[build.id])))
    keys = {a.key for a in artifacts if a.key}
    assert {"build-summary", "build-dataset", "build-preview"} <= keys, keys
    [preview] = [a for a in artifacts if a.key == "build-preview"]
    out = Path(_dated_out(chain, build))
    assert str(out) in preview.data and (out / "preview.png").stat().st_size > 1000
    assert any(a.type == "progress" for a in artifacts)
    for name, expected in (("train/adhoc", {"train-summary", "train-checkpoint", "train-loss-curve"}),
                           ("evaluate/adhoc", {"eval-metrics"})):
        run = chain["runs"][name]
        with stack.client() as client:
            found = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
        assert expected <= {a.key for a in found if a.key}, (name, [a.key for a in found])

    import httpx

    events = httpx.post(f"{stack.api_url}/events/filter", timeout=10, json={
        "filter": {"event": {"name": ["magicseg.dataset.completed"]}, "order": "DESC"}}).json()["events"]
    assert events, "no magicseg.dataset.completed event"
    payload = events[0]["payload"]
    assert payload["flow_run_id"] == str(build.id) and payload["kept"] >= 0
    assert events[0]["resource"]["prefect.resource.id"] == f"magicseg.dataset.{payload['uri']}"


def _dated_out(chain, build) -> str:
    day = build.expected_start_time.astimezone(dt.timezone.utc)
    return f"{chain['datasets']}/{day:%Y-%m-%d}"


def test_the_build_run_logs_hold_a_line_per_shard_and_the_stages_warnings(chain):
    """Read back from the server: the per-shard line, and a warning raised inside a Ray actor (the tiny LM's
    junk falls back to template prompts, which the prompt stage warns about)."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    stack, build = chain["stack"], chain["runs"]["build-dataset/scheduled"]
    with stack.client() as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[build.id])), limit=200)
    messages = [(log.level, log.message) for log in logs]
    assert any(m.startswith("shard 0 committed: kept ") and "samples/s" in m for _, m in messages), messages
    actor_warnings = [m for level, m in messages if level == 30 and m.startswith("[prompts] ")]
    assert any("no valid hf prompt" in m for m in actor_warnings), messages


def test_the_flow_run_page_renders_in_headless_chromium(chain, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no chromium on PATH: install Debian's `chromium` package (apt-get install -y chromium) "
                    "to check the UI")
    stack, build = chain["stack"], chain["runs"]["build-dataset/scheduled"]
    page = f"{stack.url}/runs/flow-run/{build.id}"
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--no-first-run", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chromium'}",
              "--virtual-time-budget=20000"]
    shot = tmp_path / "flow-run.png"
    subprocess.run([*common, "--window-size=1440,1000", f"--screenshot={shot}", page],
                   capture_output=True, timeout=120, check=False)
    assert shot.exists() and shot.stat().st_size > 10_000, "no screenshot (or a blank one)"
    dom = subprocess.run([*common, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert build.name in dom, f"run name {build.name!r} not rendered at {page}: {dom[:2000]}"
    # the build's summary table artifact has its own page
    artifact_page = f"{stack.url}/artifacts/key/build-summary"
    artifacts_shot = tmp_path / "flow-run-artifacts.png"
    subprocess.run([*common, "--window-size=1440,1000", f"--screenshot={artifacts_shot}", artifact_page],
                   capture_output=True, timeout=120, check=False)
    assert artifacts_shot.exists() and artifacts_shot.stat().st_size > 10_000
    dom = subprocess.run([*common, "--dump-dom", artifact_page], capture_output=True, text=True, timeout=120).stdout
    assert "build-summary" in dom and " kept at " in dom, f"the summary artifact did not render at {artifact_page}"
    keep = os.environ.get("MAGICSEG_E2E_SCREENSHOT")
    if keep:  # e.g. CI keeps them as build artifacts
        shutil.copy(shot, keep)
        shutil.copy(artifacts_shot, keep.replace(".png", "-artifacts.png"))
