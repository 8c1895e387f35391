"""Shared fixtures: real components only (a moto S3 server on loopback, temp dirs, tiny datasets)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid

import pytest

# Never reach a real cloud or the Prefect/HF network from tests.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing-access-key")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing-secret-key-do-not-leak")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def s3_server():
    """An S3-compatible server on 127.0.0.1 (moto's server mode, as s3fs's own tests use).

    Exposed to every client through AWS_ENDPOINT_URL, the standard variable users set for MinIO/R2/etc.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    old = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    yield endpoint
    server.stop()
    if old is None:
        os.environ.pop("AWS_ENDPOINT_URL", None)
    else:
        os.environ["AWS_ENDPOINT_URL"] = old


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket; returns its s3:// URL."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    name = f"test-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_server})
    fs.mkdir(name)
    return f"s3://{name}"


@pytest.fixture(params=["local", "s3"])
def dataset_root(request, tmp_path):
    """A dataset URI on a local folder and on the S3 server: store behaviour must not depend on the backend."""
    if request.param == "local":
        return str(tmp_path / "ds")
    bucket = request.getfixturevalue("s3_bucket")
    return f"{bucket}/ds"


@pytest.fixture
def tiny_plan():
    from magicseg_models.planning import PlanSpec, plan_jobs

    names = ("cat", "dog", "bus (vehicle)", "bicycle", "person")
    spec = PlanSpec(class_ids=(0, 1, 2, 3, 4), class_names=names, num_samples=20, seed=3, shard_size=6,
                    two_class_fraction=0.5)
    return spec, plan_jobs(spec)


@pytest.fixture
def synthetic_dataset(tiny_plan, dataset_root):
    """A small contract-following dataset (4 shards) at a local or S3 URI."""
    from magicseg_models.dataset.synthetic import write_synthetic_dataset

    spec, jobs = tiny_plan
    write_synthetic_dataset(dataset_root, jobs, list(spec.class_names), height=64, width=64,
                            config={"preset": "test"})
    return dataset_root


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """A throwaway Prefect API (the test harness's temporary server and database), once per session."""
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect-home"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="session")
def local_ray():
    """A local Ray for the session (one start costs seconds); enough logical CPUs for a few stage actors."""
    import ray

    ray.init(address="local", num_cpus=6, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=300 * 1024 * 1024)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def migrated_prefect_home(tmp_path_factory):
    """A PREFECT_HOME whose SQLite database is migrated and whose block types are registered, made once: Prefect's
    local mode does both on the first run in a home (seconds of CPU), which build and train subprocesses in
    fresh homes would otherwise pay one by one."""
    home = tmp_path_factory.mktemp("prefect-home-template")
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
    env.pop("PREFECT_API_URL", None)
    hello = ("import asyncio\nfrom prefect.client.orchestration import get_client\n"
             "async def main():\n    async with get_client() as client:\n        await client.hello()\n"
             "asyncio.run(main())\n")
    subprocess.run([sys.executable, "-c", hello], env=env, check=True, capture_output=True, timeout=300)
    return home


@pytest.fixture
def warm_prefect_home(migrated_prefect_home, tmp_path):
    """``tmp_path/prefect`` (the PREFECT_HOME of ``helpers.fresh_run_env(tmp_path)``) as a copy of the migrated
    home: the run still starts its own local Prefect, without the one-off set-up of a first run."""
    return shutil.copytree(migrated_prefect_home, tmp_path / "prefect")
