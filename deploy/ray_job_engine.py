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
- The job's logs stream to this process (hence to the worker's log); its final status becomes the exit code, so
  the worker marks the flow run crashed if the job dies without reporting. A SIGTERM or SIGINT (the flow run was
  cancelled, or the worker is stopping) stops the job.
"""

from __future__ import annotations

import os
import signal
import sys
import time

ADDRESS_ENV = "MAGICSEG_RAY_JOBS_ADDRESS"
FORWARDED_ENV = ("PREFECT__FLOW_RUN_ID", "PREFECT_API_URL")
ENTRYPOINT = "python -m prefect.engine"


def main() -> int:
    address = os.environ.get(ADDRESS_ENV)
    if not address:
        os.execv(sys.executable, [sys.executable, "-m", "prefect.engine"])
    run_id = os.environ.get("PREFECT__FLOW_RUN_ID")
    if not run_id:
        print("ray_job_engine: PREFECT__FLOW_RUN_ID is not set; this script is a Prefect worker command",
              file=sys.stderr)
        return 2

    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(address)
    job_id = f"prefect-{run_id}"
    env_vars = {name: os.environ[name] for name in FORWARDED_ENV if os.environ.get(name)}
    try:
        client.submit_job(entrypoint=ENTRYPOINT, submission_id=job_id, runtime_env={"env_vars": env_vars})
        print(f"ray_job_engine: submitted flow run {run_id} as Ray job {job_id} to {address}", flush=True)
    except RuntimeError as err:  # the job exists already (the worker resubmitted this run): follow it
        if "already exists" not in str(err):
            raise
        print(f"ray_job_engine: following the existing Ray job {job_id}", flush=True)

    def stop(signum, _frame):
        print(f"ray_job_engine: signal {signum}: stopping Ray job {job_id}", file=sys.stderr, flush=True)
        try:
            client.stop_job(job_id)
        finally:
            sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    printed = 0
    while True:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        if len(logs) > printed:
            sys.stdout.write(logs[printed:])
            sys.stdout.flush()
            printed = len(logs)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            print(f"ray_job_engine: Ray job {job_id} {status.value}", flush=True)
            return 0 if status == JobStatus.SUCCEEDED else 1
        time.sleep(5.0)


if __name__ == "__main__":
    sys.exit(main())
