#!/usr/bin/env python
"""Process-worker command that runs a Prefect flow run as a Ray job on a Ray cluster (Ray Jobs API).

A Prefect process worker normally starts ``python -m prefect.engine`` as its own subprocess. Set this script as
the work pool's ``command`` (deploy/README.md, "Flow runs as Ray jobs") and, when ``MAGICSEG_RAY_JOBS_ADDRESS``
(``http://HEAD:8265``) is set in the worker's environment, every flow run instead becomes a Ray job: the flow -
the Ray driver - runs on the head node next to the workers, which is durable (the ``ray://`` client is not) and
is what Ray Train needs. Without that variable it runs the engine locally, as the default command would.

- The job's submission id is ``prefect-<flow run id>``: a second submission of the same flow run attaches to the
  job already there instead of starting another.
- Only ``PREFECT__FLOW_RUN_ID`` and the (non-secret) ``PREFECT_API_URL`` travel in the job's runtime_env, which
  the Ray dashboard shows to anyone who can open it. ``PREFECT_API_AUTH_STRING``, storage and LLM credentials
  come from the cluster's own environment (a Kubernetes Secret, an env file on the nodes).
- No entrypoint resources are asked for, so Ray runs the driver on the head node even though the head declares
  no CPU (``num-cpus: 0``): a job entrypoint is a process the head's job supervisor starts, not a Ray task, and
  only a job given ``entrypoint_num_cpus``/``_gpus``/``_memory``/``_resources`` is scheduled like an actor.
- The job's logs stream to this process as the driver writes them (``tail_job_logs``, a websocket); if the
  connection drops (a dashboard restart) it reconnects and skips what it already printed. The final status
  becomes the exit code, so the worker marks the flow run crashed if the job dies without reporting. A SIGTERM
  or SIGINT (the flow run was cancelled, or the worker is stopping) stops the job.
- ``MAGICSEG_RAY_JOB_ENTRYPOINT`` replaces the entrypoint (tests run a short command instead of the engine).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

ADDRESS_ENV = "MAGICSEG_RAY_JOBS_ADDRESS"
ENTRYPOINT_ENV = "MAGICSEG_RAY_JOB_ENTRYPOINT"
FORWARDED_ENV = ("PREFECT__FLOW_RUN_ID", "PREFECT_API_URL")
ENTRYPOINT = "python -m prefect.engine"
RECONNECT_S = 5.0
# how long the job server may stay unreachable before this command gives up (the job itself keeps running)
UNREACHABLE_S = 600.0


def log(message: str) -> None:
    print(f"ray_job_engine: {message}", file=sys.stderr, flush=True)


async def follow(client, job_id: str):
    """Print the job's log as it grows until the job ends; return its final JobStatus."""
    printed = 0
    last_contact = time.monotonic()
    while True:
        seen = 0  # a new connection replays the log from its start
        try:
            async for chunk in client.tail_job_logs(job_id):
                fresh = chunk[max(0, printed - seen):]
                seen += len(chunk)
                if fresh:
                    sys.stdout.write(fresh)
                    sys.stdout.flush()
                    printed += len(fresh)
            status = client.get_job_status(job_id)
            last_contact = time.monotonic()
            if status.is_terminal():
                return status
        except Exception as err:  # noqa: BLE001 - any transport failure: retry until UNREACHABLE_S
            if time.monotonic() - last_contact > UNREACHABLE_S:
                raise RuntimeError(f"the Ray job server stayed unreachable for {UNREACHABLE_S:g} s: {err}") from None
            log(f"lost the log stream of {job_id} ({type(err).__name__}: {err}); reconnecting")
        await asyncio.sleep(RECONNECT_S)


def submit_or_attach(client, job_id: str, entrypoint: str, env_vars: dict[str, str], address: str) -> None:
    try:
        client.submit_job(entrypoint=entrypoint, submission_id=job_id, runtime_env={"env_vars": env_vars})
        log(f"submitted Ray job {job_id} to {address}")
    except RuntimeError:  # the Jobs API raises RuntimeError for every refusal: ask whether the job exists
        if not _job_exists(client, job_id):
            raise
        log(f"following the existing Ray job {job_id}")  # the worker resubmitted this run


def _job_exists(client, job_id: str) -> bool:
    try:
        client.get_job_info(job_id)
    except RuntimeError:  # 404: no job of that id
        return False
    return True


def main() -> int:
    address = os.environ.get(ADDRESS_ENV)
    if not address:
        os.execv(sys.executable, [sys.executable, "-m", "prefect.engine"])
    run_id = os.environ.get("PREFECT__FLOW_RUN_ID")
    if not run_id:
        log("PREFECT__FLOW_RUN_ID is not set; this script is a Prefect worker command")
        return 2

    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    job_id = f"prefect-{run_id}"
    env_vars = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
    submit_or_attach(client, job_id, os.environ.get(ENTRYPOINT_ENV) or ENTRYPOINT, env_vars, address)

    def stop(signum, _frame):
        log(f"signal {signum}: stopping Ray job {job_id}")
        try:
            client.stop_job(job_id)
        finally:
            sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    status = asyncio.run(follow(client, job_id))
    log(f"Ray job {job_id} {status.value}")
    return 0 if status == JobStatus.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
