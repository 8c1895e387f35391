"""The deployment manifests parse, follow their schemas, and name things that exist (issue #9).

prefect.yaml (deployments, schedules, triggers, work pool, concurrency), deploy/Dockerfile, the two Ray cluster
manifests and benchmarks/gpu_suite.sh are checked offline against the code they point at: entrypoints resolve to
files and functions (read with ``ast``, so a flow that does not exist yet is a clear failure, not an import
error), flow names match the ``@flow(name=...)`` decorators, every parameter and trigger template names a real
flow parameter and a real field of the event contract, and the image is the same everywhere.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
POOL = "magicseg"
CHAIN_TAG = "magicseg-chain"
# the event contract (prefect.yaml's header): what build-dataset and train emit when they complete
EVENTS = {
    "magicseg.dataset.completed": {"resource": "magicseg.dataset.", "payload": {"uri", "kept", "flow_run_id"},
                                   "emitted_by": "build-dataset/scheduled"},
    "magicseg.training.completed": {"resource": "magicseg.training.", "payload": {"checkpoint", "out", "data"},
                                    "emitted_by": "train/adhoc"},
}
EXPECTED = {"build-dataset/scheduled": "flows/build_dataset.py:build_dataset",
            "train/adhoc": "flows/train.py:train_flow",
            "evaluate/adhoc": "flows/evaluate.py:evaluate_flow"}
TRIGGERED_BY = {"train/adhoc": "magicseg.dataset.completed", "evaluate/adhoc": "magicseg.training.completed"}


# ------------------------------------------------------------------------------------------- helpers
def _prefect_yaml() -> dict:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())


def _deployments() -> dict[str, dict]:
    return {f"{d['flow_name']}/{d['name']}": d for d in _prefect_yaml()["deployments"]}


def _flow_signature(entrypoint: str) -> tuple[str, list[str]]:
    """(flow name, parameter names) of ``path.py:function``, read with ast; fails naming what is missing."""
    path, _, func = entrypoint.partition(":")
    file = ROOT / path
    assert file.is_file(), f"entrypoint {entrypoint}: {path} does not exist (yet)"
    tree = ast.parse(file.read_text(), filename=str(file))
    defs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == func]
    assert defs, f"entrypoint {entrypoint}: no top-level function {func} in {path}"
    fn = defs[0]
    name = None
    for dec in fn.decorator_list:
        target = dec.func if isinstance(dec, ast.Call) else dec
        if (isinstance(target, ast.Name) and target.id == "flow") or \
                (isinstance(target, ast.Attribute) and target.attr == "flow"):
            name = fn.name.replace("_", "-")  # Prefect's default flow name
            if isinstance(dec, ast.Call):
                for kw in dec.keywords:
                    if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                        name = kw.value.value
            break
    assert name is not None, f"entrypoint {entrypoint}: {func} is not decorated with @flow"
    params = [a.arg for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs]
    return name, params


def _templates(value) -> list[str]:
    if isinstance(value, str):
        return [value] if "{{" in value else []
    if isinstance(value, dict):
        return [t for v in value.values() for t in _templates(v)]
    if isinstance(value, list):
        return [t for v in value for t in _templates(v)]
    return []


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        op, _, args = buf.partition(" ")
        out.append((op.upper(), args.strip()))
        buf = ""
    return out


def _arg_default(name: str, instructions) -> str:
    for op, args in instructions:
        if op == "ARG" and args.startswith(f"{name}="):
            return args.split("=", 1)[1].strip().strip('"')
    raise AssertionError(f"deploy/Dockerfile has no ARG {name}=...")


def _image_from_dockerfile() -> str:
    match = re.search(r"docker build -f deploy/Dockerfile -t (\S+) \.", (DEPLOY / "Dockerfile").read_text())
    assert match, "deploy/Dockerfile's header must show its build command (docker build -f deploy/Dockerfile -t IMAGE .)"
    return match.group(1)


def _project_version() -> str:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def _kuberay() -> list[dict]:
    return list(yaml.safe_load_all((DEPLOY / "kuberay-raycluster.yaml").read_text()))


def _argparse_flags(script: Path) -> set[str]:
    flags = set()
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            flags |= {a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("-")}
    return flags


# ------------------------------------------------------------------------------------------- prefect.yaml
def test_prefect_yaml_has_the_three_deployments_on_the_magicseg_process_pool():
    deployments = _deployments()
    assert set(deployments) == set(EXPECTED), sorted(deployments)
    for full, dep in deployments.items():
        assert dep["entrypoint"] == EXPECTED[full], (full, dep["entrypoint"])
        assert dep["work_pool"]["name"] == POOL, full
    steps = _prefect_yaml()["pull"]
    directories = [s["prefect.deployments.steps.set_working_directory"]["directory"] for s in steps
                   if "prefect.deployments.steps.set_working_directory" in s]
    assert directories == ["{{ $MAGICSEG_WORKDIR }}"], steps


def test_prefect_yaml_validates_with_prefects_own_models():
    """The models `prefect deploy` reads prefect.yaml with (private module: skipped if Prefect moves it)."""
    try:
        from prefect.cli.deploy._models import PrefectYamlModel
    except ImportError as err:  # pragma: no cover - a Prefect release that reorganised its CLI
        pytest.skip(f"prefect.cli.deploy._models not importable ({err}); the schema checks below still run")
    model = PrefectYamlModel.model_validate(_prefect_yaml())
    assert len(model.deployments) == 3


@pytest.mark.parametrize("deployment", sorted(EXPECTED))
def test_entrypoint_resolves_and_flow_name_matches(deployment):
    dep = _deployments()[deployment]
    name, params = _flow_signature(dep["entrypoint"])
    assert name == dep["flow_name"], f"{dep['entrypoint']} is @flow(name={name!r}), prefect.yaml says {dep['flow_name']!r}"
    unknown = set(dep.get("parameters") or {}) - set(params)
    hint = (" - issue #9 proposes out_root: with out unset, out = <out_root>/<UTC date of the scheduled start>"
            if "out_root" in unknown else "")
    assert not unknown, (f"{deployment}: parameters {sorted(unknown)} are not parameters of {dep['entrypoint']} "
                         f"({', '.join(params)}){hint}")


def test_build_deployment_is_nightly_and_one_at_a_time():
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.client.schemas.schedules import CronSchedule

    dep = _deployments()["build-dataset/scheduled"]
    (schedule,) = dep["schedules"]
    cron = CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])
    assert cron.cron.split()[2:] == ["*", "*", "*"], "nightly: every day of every month"
    assert {"preset", "num_samples", "seed"} <= set(dep["parameters"])
    assert "out" not in dep["parameters"] and dep["parameters"]["out_root"], "dated default: out_root + date"
    for full, d in _deployments().items():
        limit = ConcurrencyLimitConfig.model_validate(d["concurrency_limit"])
        assert limit.limit >= 1, full
    assert dep["concurrency_limit"]["limit"] == 1
    # the per-URI guarantee is the build's lock, not this per-deployment limit: say so where the limit is
    text = (ROOT / "prefect.yaml").read_text()
    assert "lock.json" in text and (ROOT / "tasks" / "lock.py").is_file()


@pytest.mark.parametrize("deployment", sorted(TRIGGERED_BY))
def test_triggers_validate_and_their_templates_name_real_parameters_and_payload_fields(deployment):
    from jinja2 import StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment
    from pydantic import TypeAdapter

    from prefect.events import DeploymentTriggerTypes

    dep = _deployments()[deployment]
    event = TRIGGERED_BY[deployment]
    contract = EVENTS[event]
    _, params = _flow_signature(dep["entrypoint"])
    (spec,) = dep["triggers"]
    trigger = TypeAdapter(DeploymentTriggerTypes).validate_python(dict(spec))
    assert trigger.expect == {event}
    resource_id = spec["match"]["prefect.resource.id"]
    assert resource_id == contract["resource"] + "*", resource_id

    # chained runs only: the upstream deployment carries the tag the trigger matches on
    upstream = _deployments()[contract["emitted_by"]]
    assert spec["match_related"] == {"prefect.resource.id": f"prefect.tag.{CHAIN_TAG}", "prefect.resource.role": "tag"}
    assert CHAIN_TAG in upstream["tags"], f"{contract['emitted_by']} must be tagged {CHAIN_TAG}"

    unknown = set(spec["parameters"]) - set(params)
    assert not unknown, f"{deployment}: trigger parameters {sorted(unknown)} are not flow parameters ({params})"
    # render every template against an event with exactly the contract's payload: an unknown field raises
    sample = {"payload": {k: f"<{k}>" for k in contract["payload"]}, "event": event}
    env = SandboxedEnvironment(undefined=StrictUndefined)
    rendered = {k: env.from_string(v).render(event=sample) if isinstance(v, str) else v
                for k, v in spec["parameters"].items()}
    for template in _templates(spec["parameters"]):
        for field in re.findall(r"event\.payload\.(\w+)", template):
            assert field in contract["payload"], (deployment, field)
    if deployment == "train/adhoc":
        assert rendered["data"] == "<uri>" and rendered["out"] == "<uri>/train/<flow_run_id>"
    else:
        assert rendered["checkpoint"] == "<checkpoint>" and rendered["out"].startswith("<out>/")


def test_deploy_time_templates_are_documented():
    """Every Prefect Variable and environment variable prefect.yaml reads has its setup line in deploy/README.md."""
    text = json.dumps(_prefect_yaml())  # the values, not the comments
    readme = (DEPLOY / "README.md").read_text()
    variables = set(re.findall(r"\{\{\s*prefect\.variables\.(\w+)\s*\}\}", text))
    assert variables, "prefect.yaml reads its storage roots from Prefect Variables"
    for name in variables:
        assert f"prefect variable set {name}" in readme, name
    for name in re.findall(r"\{\{\s*\$(\w+)\s*\}\}", text):
        assert name in readme, name


# ------------------------------------------------------------------------------------------- image
def test_dockerfile_references_files_that_exist_and_the_make_pins():
    instructions = _dockerfile()
    ops = [op for op, _ in instructions]
    assert "ENTRYPOINT" not in ops and ops.count("FROM") >= 1
    for op, args in instructions:
        if op != "COPY" or "--from=" in args:
            continue
        sources = [a for a in args.split() if not a.startswith("--")][:-1]
        for src in sources:
            assert (ROOT / src).exists(), f"Dockerfile COPY {src}: no such file in the repository"
    makefile = (ROOT / "Makefile").read_text()
    make_pins = re.search(r"^TORCH_PINS \?= (.+)$", makefile, re.M).group(1).strip()
    pins = {args.split("=", 1)[1].strip('"') for op, args in instructions if op == "ARG" and args.startswith("TORCH_PINS=")}
    assert pins == {make_pins}, f"Dockerfile TORCH_PINS {pins} != Makefile's {make_pins!r}"
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"pip wheel --no-build-isolation .*groundingdino-py", text), "groundingdino-py: no build isolation"
    assert "pip install ." in text, "the project itself is installed (Ray workers import installed code only)"
    workdirs = [args for op, args in instructions if op == "WORKDIR"]
    assert workdirs[-1] == "/opt/magicseg" and "MAGICSEG_WORKDIR=/opt/magicseg" in text


def test_dockerignore_keeps_what_the_image_copies():
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    assert ".venv" in patterns and ".git" in patterns
    for op, args in _dockerfile():
        if op != "COPY" or "--from=" in args:
            continue
        for src in [a for a in args.split() if not a.startswith("--")][:-1]:
            hit = [p for p in patterns if fnmatch.fnmatch(src, p) or fnmatch.fnmatch(src.rstrip("/"), p)]
            assert not hit, f".dockerignore {hit} drops {src}, which the Dockerfile copies"


def test_one_image_name_everywhere_and_its_tag_is_the_project_version():
    image = _image_from_dockerfile()
    assert image.rsplit(":", 1)[1] == _project_version()
    assert f'org.opencontainers.image.version="{_project_version()}"' in (DEPLOY / "Dockerfile").read_text()
    assert _prefect_yaml()["definitions"]["image"] == image
    launcher = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())
    assert launcher["docker"]["image"] == image
    images = set()
    for doc in _kuberay():
        spec = doc["spec"]
        templates = ([spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
                     if doc["kind"] == "RayCluster" else [spec["template"]])
        images |= {c["image"] for t in templates for c in t["spec"]["containers"]}
    assert images == {image}, images


# ------------------------------------------------------------------------------------------- Ray clusters
def test_kuberay_manifest_is_a_ray_v1_cluster_with_a_gpu_group_and_secrets_from_a_secret():
    docs = {d["kind"]: d for d in _kuberay()}
    cluster = docs["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1"
    ray_pin = _arg_default("RAY_PIN", _dockerfile())
    assert ray_pin.endswith("==" + cluster["spec"]["rayVersion"]), (ray_pin, cluster["spec"]["rayVersion"])
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"  # the Jobs API must be reachable in the cluster
    groups = cluster["spec"]["workerGroupSpecs"]
    gpu = [g for g in groups if any("nvidia.com/gpu" in c["resources"]["limits"] for c in g["template"]["spec"]["containers"])]
    assert gpu, "a GPU worker group"
    for g in groups:
        assert g["groupName"] and g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
    containers = [c for t in [head["template"]] + [g["template"] for g in groups] for c in t["spec"]["containers"]]
    containers += docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    for c in containers:
        assert {"secretRef": {"name": "magicseg-runtime"}} in c["envFrom"], c["name"]
        for env in c.get("env", []):  # literal values only for what is not a secret
            assert not re.search(r"SECRET|KEY|TOKEN|PASSWORD|AUTH", env["name"]) or "valueFrom" in env, env["name"]
    worker = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert worker["command"][:5] == ["prefect", "worker", "start", "--pool", POOL]
    address = {e["name"]: e.get("value") for e in worker["env"]}["MAGICSEG_RAY_JOBS_ADDRESS"]
    assert address == f"http://{cluster['metadata']['name']}-head-svc:8265", address


def test_cluster_launcher_yaml_follows_rays_schema():
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert any(t["resources"].get("GPU", 0) >= 1 for t in types.values()), "a GPU node type"
    assert types[config["head_node_type"]]["resources"].get("GPU", 0) == 0
    text = (DEPLOY / "ray-cluster.yaml").read_text()
    assert not re.search(r"(AWS_SECRET_ACCESS_KEY|PREFECT_API_AUTH_STRING)=\S", text), "no credentials in the file"


def test_ray_job_engine_forwards_no_secret_and_needs_a_flow_run_id():
    script = DEPLOY / "ray_job_engine.py"
    compile(script.read_text(), str(script), "exec")
    tree = ast.parse(script.read_text())
    forwarded = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                     and getattr(n.targets[0], "id", "") == "FORWARDED_ENV")
    assert not [n for n in forwarded if re.search(r"AUTH|KEY|SECRET|TOKEN", n)], forwarded
    env = {k: v for k, v in os.environ.items() if k != "PREFECT__FLOW_RUN_ID"}
    env["MAGICSEG_RAY_JOBS_ADDRESS"] = "http://127.0.0.1:9"
    done = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "PREFECT__FLOW_RUN_ID" in done.stderr, done.stderr


# ------------------------------------------------------------------------------------------- GPU suite
def _suite() -> str:
    return (ROOT / "benchmarks" / "gpu_suite.sh").read_text()


def test_gpu_suite_is_valid_bash():
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_suite.sh")], check=True)


def test_gpu_suite_wrapper_documents_only_flags_gpu_suite_py_accepts():
    # the wrapper passes its arguments through: every flag its usage lines show must exist in the script
    usage = [line for line in _suite().splitlines() if line.startswith("#   bash")]
    flags = {f for line in usage for f in re.findall(r"(--[a-z][a-z-]*)", line)}
    assert {"--smoke", "--only", "--budget-s"} <= flags
    assert not flags - _argparse_flags(ROOT / "benchmarks" / "gpu_suite.py")


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi: it would run the suite")
def test_gpu_suite_fails_clearly_without_a_gpu(tmp_path):
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh")], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "OUT_DIR": str(tmp_path / "suite")})
    assert done.returncode == 2
    assert "needs an NVIDIA GPU" in done.stderr, done.stderr
    assert not (tmp_path / "suite").exists()


# ------------------------------------------------------------------------------------------- docs
def test_deploy_readme_has_the_commands_and_operations_doc_points_to_it():
    readme = (DEPLOY / "README.md").read_text()
    for command in ("prefect server start", "prefect work-pool create magicseg --type process",
                    "prefect --no-prompt deploy --all", "prefect worker start --pool magicseg",
                    "PREFECT_SERVER_API_AUTH_STRING", "PREFECT_API_AUTH_STRING", "ray job submit",
                    "kubectl apply -f deploy/kuberay-raycluster.yaml", "ray up deploy/ray-cluster.yaml",
                    "docker build -f deploy/Dockerfile"):
        assert command in readme, command
    ops = (ROOT / "docs" / "operations.md").read_text()
    assert "issue #9" not in ops and "deploy/README.md" in ops
