"""The deployment manifests parse, follow their schemas, and name things that exist (issues #9, #14).

prefect.yaml (deployments, schedules, triggers, work pool, concurrency), deploy/Dockerfile, the Ray cluster
manifests (KubeRay RayCluster and RayJob, cluster launcher) and benchmarks/gpu_suite.sh are checked offline against
the code they point at: entrypoints resolve to files and functions (read with ``ast``, so a flow that does not
exist yet is a clear failure, not an import error), flow names match the ``@flow(name=...)`` decorators, every
parameter and trigger template names a real flow parameter and a real field of the event contract, the image,
the model-cache volume and the service account are the same everywhere, and the head declares no CPU or GPU.
deploy/ray_job_engine.py also runs for real against a private local Ray head with the Jobs API (slow tests,
skipped where ray[default], which the dashboard needs, is not installed).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import importlib.util
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
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


def _manifest(name: str) -> dict[str, dict]:
    """The documents of a multi-document manifest, by kind (each kind appears once in ours)."""
    docs = [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]
    kinds = [d["kind"] for d in docs]
    assert len(set(kinds)) == len(kinds), f"{name}: one document per kind, got {kinds}"
    return {d["kind"]: d for d in docs}


def _kuberay() -> dict[str, dict]:
    return _manifest("kuberay-raycluster.yaml")


def _rayjob() -> dict[str, dict]:
    return _manifest("kuberay-rayjob.yaml")


def _ray_pods(cluster_spec: dict) -> dict[str, dict]:
    """Pod spec of the head and of each worker group of a RayCluster spec."""
    pods = {"head": cluster_spec["headGroupSpec"]["template"]["spec"]}
    pods.update({g["groupName"]: g["template"]["spec"] for g in cluster_spec["workerGroupSpecs"]})
    return pods


def _all_pods() -> dict[str, dict]:
    """Every pod spec the two KubeRay manifests create, named by where it is."""
    kuberay, rayjob = _kuberay(), _rayjob()
    pods = {f"RayCluster/{k}": v for k, v in _ray_pods(kuberay["RayCluster"]["spec"]).items()}
    pods.update({f"RayJob/{k}": v for k, v in _ray_pods(rayjob["RayJob"]["spec"]["rayClusterSpec"]).items()})
    pods["Deployment/prefect-worker"] = kuberay["Deployment"]["spec"]["template"]["spec"]
    return pods



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
    assert steps == [{"flows.deploy_steps.enter_project": {"directory": "{{ $MAGICSEG_WORKDIR }}"}}], steps


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
    images = {name: {c["image"] for c in pod["containers"]} for name, pod in _all_pods().items()}
    assert all(found == {image} for found in images.values()), images


# ------------------------------------------------------------------------------------------- Ray clusters
# Field names of KubeRay's ray.io/v1 types (ray-operator/apis/ray/v1/*_types.go), so a misspelt field - which the
# API server would drop or refuse - fails here
RAYJOB_FIELDS = {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate", "metadata",
                 "clusterSelector", "submitterConfig", "managedBy", "deletionStrategy", "entrypoint",
                 "runtimeEnvYAML", "jobId", "submissionMode", "entrypointResources", "entrypointNumCpus",
                 "entrypointNumGpus", "entrypointMemory", "ttlSecondsAfterFinished", "shutdownAfterJobFinishes",
                 "suspend", "schedule"}
RAYCLUSTER_FIELDS = {"headGroupSpec", "workerGroupSpecs", "rayVersion", "enableInTreeAutoscaling",
                     "autoscalerOptions", "headServiceAnnotations", "suspend", "managedBy",
                     "gcsFaultToleranceOptions"}
HEAD_GROUP_FIELDS = {"serviceType", "headService", "enableIngress", "rayStartParams", "template"}
WORKER_GROUP_FIELDS = {"groupName", "replicas", "minReplicas", "maxReplicas", "numOfHosts", "rayStartParams",
                       "template", "scaleStrategy", "idleTimeoutSeconds", "suspend"}
AUTOSCALER_FIELDS = {"resources", "image", "imagePullPolicy", "env", "envFrom", "volumeMounts", "securityContext",
                     "idleTimeoutSeconds", "upscalingMode", "version"}
CACHE_ENV = {"HF_HOME": "/cache/huggingface", "MAGICSEG_CACHE": "/cache/magicseg"}


def _gpu_groups(cluster_spec: dict) -> list[dict]:
    return [g for g in cluster_spec["workerGroupSpecs"]
            if any("nvidia.com/gpu" in c["resources"]["limits"] for c in g["template"]["spec"]["containers"])]


@pytest.mark.parametrize("manifest", ["RayCluster", "RayJob"])
def test_cluster_spec_uses_only_kuberay_fields(manifest):
    spec = _kuberay()["RayCluster"]["spec"] if manifest == "RayCluster" else _rayjob()["RayJob"]["spec"]["rayClusterSpec"]
    assert set(spec) <= RAYCLUSTER_FIELDS, set(spec) - RAYCLUSTER_FIELDS
    assert set(spec["headGroupSpec"]) <= HEAD_GROUP_FIELDS, set(spec["headGroupSpec"]) - HEAD_GROUP_FIELDS
    assert set(spec.get("autoscalerOptions", {})) <= AUTOSCALER_FIELDS
    for group in spec["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP_FIELDS, (group["groupName"], set(group) - WORKER_GROUP_FIELDS)
    # KubeRay passes rayStartParams to `ray start` as --key=value: values must be strings
    for params in [spec["headGroupSpec"]["rayStartParams"]] + [g["rayStartParams"] for g in spec["workerGroupSpecs"]]:
        assert all(isinstance(v, str) for v in params.values()), params


def test_kuberay_manifest_is_a_ray_v1_cluster_with_a_gpu_group_and_secrets_from_a_secret():
    docs = _kuberay()
    cluster = docs["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1"
    ray_pin = _arg_default("RAY_PIN", _dockerfile())
    assert ray_pin.endswith("==" + cluster["spec"]["rayVersion"]), (ray_pin, cluster["spec"]["rayVersion"])
    head = cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"  # the Jobs API must be reachable in the cluster
    groups = cluster["spec"]["workerGroupSpecs"]
    assert _gpu_groups(cluster["spec"]), "a GPU worker group"
    for g in groups:
        assert g["groupName"] and g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], g["groupName"]
    for name, pod in _all_pods().items():
        for c in pod["containers"]:
            assert {"secretRef": {"name": "magicseg-runtime"}} in c["envFrom"], (name, c["name"])
            for env in c.get("env", []):  # literal values only for what is not a secret
                assert not re.search(r"SECRET|KEY|TOKEN|PASSWORD|AUTH", env["name"]) or "valueFrom" in env, env["name"]
    worker = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert worker["command"][:5] == ["prefect", "worker", "start", "--pool", POOL]
    address = {e["name"]: e.get("value") for e in worker["env"]}["MAGICSEG_RAY_JOBS_ADDRESS"]
    assert address == f"http://{cluster['metadata']['name']}-head-svc:8265", address


@pytest.mark.parametrize("manifest", ["RayCluster", "RayJob"])
def test_head_runs_no_actors_and_gpu_workers_scale_from_zero(manifest):
    spec = _kuberay()["RayCluster"]["spec"] if manifest == "RayCluster" else _rayjob()["RayJob"]["spec"]["rayClusterSpec"]
    params = spec["headGroupSpec"]["rayStartParams"]
    assert params.get("num-cpus") == "0" and params.get("num-gpus") == "0", params
    head_containers = spec["headGroupSpec"]["template"]["spec"]["containers"]
    assert not any("nvidia.com/gpu" in c["resources"].get("limits", {}) for c in head_containers)
    # the autoscaler is what starts GPU pods for a build's pending GPU demand
    assert spec["enableInTreeAutoscaling"] is True
    for group in _gpu_groups(spec):
        assert group["minReplicas"] == 0 and group.get("replicas", 0) == 0, group["groupName"]
        assert group["maxReplicas"] >= 1


def test_model_cache_is_one_persistent_claim_mounted_at_cache_on_every_ray_pod():
    for docs in (_kuberay(), _rayjob()):
        claim = docs["PersistentVolumeClaim"]
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"], "the head and every GPU pod mount it at once"
        assert claim["spec"]["resources"]["requests"]["storage"]
    ray_pods = {k: v for k, v in _all_pods().items() if not k.startswith("Deployment/")}
    assert len(ray_pods) >= 4  # head and GPU group, in both manifests
    for name, pod in ray_pods.items():
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["cache"] == {"name": "cache", "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}}, name
        assert not any("emptyDir" in v and "cache" in v["name"] for v in pod["volumes"]), name
        for c in pod["containers"]:
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert mounts.get("/cache") == "cache", (name, c["name"])
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            assert {k: env.get(k) for k in CACHE_ENV} == CACHE_ENV, (name, c["name"])


def test_cache_variables_are_the_ones_the_code_and_the_image_read(tmp_path):
    """MAGICSEG_CACHE is what the checkpoint fetcher and the CLI read; HF_HOME moves huggingface_hub's cache."""
    from magicseg_models.weights import fetch

    assert fetch.CACHE_ENV == "MAGICSEG_CACHE"
    assert 'os.environ.get("MAGICSEG_CACHE")' in (ROOT / "flows" / "cli.py").read_text()
    probe = ("import huggingface_hub.constants as c; from magicseg_models.weights.fetch import cache_path; "
             "print(c.HF_HUB_CACHE); print(cache_path('s3://bucket/sam.pth'))")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "MAGICSEG_CACHE": str(tmp_path / "ms"),
           "PYTHONPATH": str(ROOT)}
    env.pop("HF_HUB_CACHE", None)
    hub, checkpoint = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                                     check=True).stdout.split()
    assert hub == str(tmp_path / "hf" / "hub")
    assert checkpoint.startswith(str(tmp_path / "ms") + os.sep)
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for name, value in CACHE_ENV.items():  # the image's defaults point at the same volume
        assert f"{name}={value}" in dockerfile, name


def test_every_pod_runs_as_the_magicseg_service_account():
    for docs in (_kuberay(), _rayjob()):
        account = docs["ServiceAccount"]
        assert account["apiVersion"] == "v1" and account["metadata"]["name"] == "magicseg"
    for name, pod in _all_pods().items():
        assert pod.get("serviceAccountName") == "magicseg", name
    text = (DEPLOY / "kuberay-raycluster.yaml").read_text()
    # the identity bindings, as examples for the user to fill in
    assert "eks.amazonaws.com/role-arn" in text and "iam.gke.io/gcp-service-account" in text


def test_rayjob_runs_one_build_on_a_cluster_it_deletes_afterwards():
    from flows.cli import build_parser, cmd_build

    job = _rayjob()["RayJob"]
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert set(spec) <= RAYJOB_FIELDS, set(spec) - RAYJOB_FIELDS
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    assert isinstance(spec["activeDeadlineSeconds"], int) and spec["activeDeadlineSeconds"] > 0
    # entrypoint resources would let Ray place the driver off the head; the head declares num-cpus 0
    assert not {"entrypointNumCpus", "entrypointNumGpus", "entrypointMemory", "entrypointResources"} & set(spec)
    command = shlex.split(spec["entrypoint"])
    assert command[0] == "magicseg"
    args = build_parser().parse_args(command[1:])
    assert args.func is cmd_build and args.preset == "sd15" and args.out.startswith("s3://"), args


def test_rayjob_and_raycluster_describe_the_same_cluster():
    kuberay, rayjob = _kuberay(), _rayjob()
    assert rayjob["RayJob"]["spec"]["rayClusterSpec"] == kuberay["RayCluster"]["spec"]
    for kind in ("ServiceAccount", "PersistentVolumeClaim"):  # applying both files is harmless
        assert rayjob[kind] == kuberay[kind], kind


def test_cluster_launcher_yaml_follows_rays_schema():
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert any(t["resources"].get("GPU", 0) >= 1 for t in types.values()), "a GPU node type"
    assert all(t["min_workers"] == 0 for name, t in types.items() if name != config["head_node_type"])
    text = (DEPLOY / "ray-cluster.yaml").read_text()
    assert not re.search(r"(AWS_SECRET_ACCESS_KEY|PREFECT_API_AUTH_STRING)=\S", text), "no credentials in the file"


def test_cluster_launcher_head_runs_no_actors_and_every_node_mounts_the_cache():
    config = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())
    assert config["available_node_types"][config["head_node_type"]]["resources"] == {"CPU": 0, "GPU": 0}
    (start,) = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    assert "--num-cpus=0" in start.split() and "--head" in start.split(), start
    options = " ".join(config["docker"]["run_options"])
    assert "-v /mnt/cache:/cache" in options  # docker runs on every node type, head and workers
    for name, value in CACHE_ENV.items():
        assert f"--env {name}={value}" in options, name
    assert any("/mnt/cache" in c and "mount" in c for c in config["initialization_commands"])


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


def _engine_module():
    """deploy/ray_job_engine.py as a module (it is a script, not part of a package)."""
    spec = importlib.util.spec_from_file_location("ray_job_engine", DEPLOY / "ray_job_engine.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _DroppingJobServer:
    """Stands in for Ray's JobSubmissionClient: the first log stream drops mid-job, as on a dashboard restart;
    the next one replays the log from its start, in other chunks, as Ray's log tail does."""

    def __init__(self, drops: int = 1):
        self.drops = drops
        self.streams = 0

    async def tail_job_logs(self, job_id):
        self.streams += 1
        if self.streams <= self.drops:
            yield "line 0\n"
            yield "line 1\n"
            raise RuntimeError("WebSocket connection closed unexpectedly with close code 1006")
        yield "line 0\nline 1\nli"
        yield "ne 2\n"

    def get_job_status(self, job_id):
        from ray.job_submission import JobStatus

        return JobStatus.SUCCEEDED if self.streams > self.drops else JobStatus.RUNNING


def test_engine_log_follower_reconnects_without_printing_anything_twice(capsys):
    engine = _engine_module()
    engine.RECONNECT_S = 0.0
    server = _DroppingJobServer()
    status = asyncio.run(engine.follow(server, "prefect-x"))
    out, err = capsys.readouterr()
    assert status.value == "SUCCEEDED" and server.streams == 2
    assert out == "line 0\nline 1\nline 2\n"
    assert "reconnecting" in err


def test_engine_log_follower_gives_up_on_a_job_server_that_stays_away():
    engine = _engine_module()
    engine.RECONNECT_S, engine.UNREACHABLE_S = 0.0, 0.0
    with pytest.raises(RuntimeError, match="unreachable"):
        asyncio.run(engine.follow(_DroppingJobServer(drops=10**6), "prefect-x"))


# ------------------------------------------------------------------------------------------- Ray job engine, live
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop_own_ray(temp_dir: str) -> None:
    """Stop the processes of the Ray head under ``temp_dir`` only (``ray stop`` would end every Ray on the machine)."""
    import psutil

    marks = [temp_dir]
    latest = os.path.join(temp_dir, "session_latest")
    if os.path.exists(latest):
        marks.append(os.path.basename(os.path.realpath(latest)))
    mine = []
    for proc in psutil.process_iter(["cmdline"]):
        args = proc.info["cmdline"] or []
        if proc.pid != os.getpid() and any(mark in arg for arg in args for mark in marks):
            mine.append(proc)
    for proc in mine:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(mine, timeout=5)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


@pytest.fixture(scope="module")
def ray_jobs_address():
    """A private Ray head whose dashboard serves the Jobs API, declaring no CPU and no GPU (like the clusters)."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # token auth would turn the test's client away
    probe = subprocess.run([sys.executable, "-c", "import ray.dashboard.optional_deps"], env=env,
                           capture_output=True, text=True)
    if probe.returncode:
        pytest.skip("the Ray Jobs API needs the dashboard, whose dependencies (ray[default]) are not installed: "
                    + probe.stderr.strip().splitlines()[-1])
    temp_dir = tempfile.mkdtemp(prefix="rj", dir="/tmp")  # Unix socket paths must stay under 107 bytes
    dashboard = _free_port()
    cmd = [os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head", f"--port={_free_port()}",
           f"--temp-dir={temp_dir}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={_free_port()}",
           f"--ray-client-server-port={_free_port()}", "--num-cpus=0", "--num-gpus=0", "--disable-usage-stats"]
    try:
        subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=180)
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        _stop_own_ray(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _engine(address: str, run_id: str, entrypoint: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "MAGICSEG_RAY_JOBS_ADDRESS": address,
           "PREFECT__FLOW_RUN_ID": run_id, "MAGICSEG_RAY_JOB_ENTRYPOINT": entrypoint,
           "PREFECT_API_URL": "http://prefect.invalid:4200/api"}
    return subprocess.Popen([sys.executable, str(DEPLOY / "ray_job_engine.py")], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _lines_as_they_come(proc: subprocess.Popen, timeout: float) -> tuple[list[tuple[float, str]], str]:
    """(arrival time, line) of the engine's stdout while it runs, and its stderr; kills it past ``timeout``."""
    arrived: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: arrived.extend((time.monotonic(), line.rstrip("\n")) for line in proc.stdout))
    reader.start()
    try:
        proc.wait(timeout=timeout)
    finally:
        proc.kill()
        reader.join(10)
    return arrived, proc.stderr.read()


def _python(code: str) -> str:
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"


SLOW_LINES = ("import os, time\n"
              "print('run', os.environ['PREFECT__FLOW_RUN_ID'], 'api', os.environ['PREFECT_API_URL'], flush=True)\n"
              "for i in range(4):\n"
              "    time.sleep(1.0)\n"
              "    print('line', i, flush=True)\n")


@pytest.mark.slow
def test_engine_streams_the_jobs_log_in_order_and_exits_with_its_status(ray_jobs_address):
    run_id = f"test-{uuid.uuid4().hex[:12]}"
    arrived, stderr = _lines_as_they_come(_engine(ray_jobs_address, run_id, _python(SLOW_LINES)), timeout=180)
    lines = [line for _, line in arrived]
    ours = [line for line in lines if line.startswith(("run ", "line "))]
    # the job ran on a head declaring no CPU, and saw only the forwarded variables' values
    assert ours == [f"run {run_id} api http://prefect.invalid:4200/api"] + [f"line {i}" for i in range(4)], lines
    times = {line: t for t, line in arrived}
    # streamed while the job ran (a one-second gap per line), not fetched whole at the end
    assert times["line 3"] - times["line 0"] >= 2.0, arrived
    assert f"Ray job prefect-{run_id} SUCCEEDED" in stderr, stderr

    # the same flow run again (a worker resubmitting it) attaches to the finished job: no second job, same log
    again = _engine(ray_jobs_address, run_id, _python("print('a second job', flush=True)"))
    arrived, stderr = _lines_as_they_come(again, timeout=120)
    assert again.returncode == 0, stderr
    assert "following the existing Ray job" in stderr
    assert [line for _, line in arrived if line.startswith(("run ", "line "))] == ours
    assert "a second job" not in [line for _, line in arrived]


@pytest.mark.slow
def test_engine_exit_code_says_the_job_failed(ray_jobs_address):
    proc = _engine(ray_jobs_address, f"test-{uuid.uuid4().hex[:12]}",
                   _python("print('about to fail', flush=True); raise SystemExit(3)"))
    arrived, stderr = _lines_as_they_come(proc, timeout=180)
    assert proc.returncode == 1, stderr
    assert "about to fail" in [line for _, line in arrived]
    assert "FAILED" in stderr


@pytest.mark.slow
def test_sigterm_stops_the_job(ray_jobs_address):
    from ray.job_submission import JobStatus, JobSubmissionClient

    run_id = f"test-{uuid.uuid4().hex[:12]}"
    proc = _engine(ray_jobs_address, run_id, _python("import time\nprint('started', flush=True)\ntime.sleep(600)"))
    watchdog = threading.Timer(180, proc.kill)  # a job that never starts must not hang the suite
    watchdog.start()
    try:
        for line in proc.stdout:  # the job is running once its first line is here
            if line.strip() == "started":
                break
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 128 + signal.SIGTERM, proc.stderr.read()
    finally:
        watchdog.cancel()
        proc.kill()
    client = JobSubmissionClient(ray_jobs_address)
    deadline = time.monotonic() + 60
    while client.get_job_status(f"prefect-{run_id}") != JobStatus.STOPPED and time.monotonic() < deadline:
        time.sleep(0.5)
    assert client.get_job_status(f"prefect-{run_id}") == JobStatus.STOPPED


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
                    "kubectl apply -f deploy/kuberay-raycluster.yaml", "kubectl apply -f deploy/kuberay-rayjob.yaml",
                    "ray up deploy/ray-cluster.yaml",
                    "docker build -f deploy/Dockerfile"):
        assert command in readme, command
    ops = (ROOT / "docs" / "operations.md").read_text()
    assert "issue #9" not in ops and "deploy/README.md" in ops


# ------------------------------------------------------------------------------------------- the pull step
def test_the_pull_step_enters_a_project_without_any_environment(tmp_path, monkeypatch):
    from flows.deploy_steps import enter_project, installed_root

    monkeypatch.chdir(tmp_path)  # where a process worker starts a flow run: a fresh temporary folder
    monkeypatch.delenv("MAGICSEG_WORKDIR", raising=False)
    assert enter_project("") == {"directory": installed_root()}  # "{{ $MAGICSEG_WORKDIR }}" unset at deploy
    assert (Path.cwd() / "flows" / "build_dataset.py").is_file()


def test_the_pull_step_prefers_the_workers_workdir_then_the_deploy_time_one(tmp_path, monkeypatch):
    from flows.deploy_steps import enter_project

    image, deployed = tmp_path / "opt-magicseg", tmp_path / "checkout"
    for root in (image, deployed):
        (root / "flows").mkdir(parents=True)
        (root / "flows" / "build_dataset.py").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MAGICSEG_WORKDIR", str(image))
    assert enter_project(str(deployed)) == {"directory": str(image)}
    monkeypatch.delenv("MAGICSEG_WORKDIR")
    assert enter_project(str(deployed)) == {"directory": str(deployed)}


def test_the_pull_step_says_where_it_looked(tmp_path, monkeypatch):
    from flows.deploy_steps import enter_project
    from magicseg_models.errors import ConfigError

    monkeypatch.setenv("MAGICSEG_WORKDIR", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"^no flows/build_dataset.py to run: looked in MAGICSEG_WORKDIR \(") as err:
        enter_project("", installed=str(tmp_path / "site"))  # an installation without the flows
    assert "\n" not in str(err.value) and "set MAGICSEG_WORKDIR on the worker" in str(err.value)
