"""The build flow's chunk loop on real Prefect task futures: between progress reports it waits for the next chunk
to end, and it must not fail when the last chunk ends in the moment between its check and its wait (seen in CI:
a StopIteration from the progress loop failed a build whose every shard had committed)."""

from __future__ import annotations

import time

from prefect import flow, task

from flows.build_dataset import _wait_for_next


@task
def _chunk(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_waiting_when_every_chunk_has_ended_returns_at_once(prefect_api):
    @flow
    def all_done() -> float:
        futures = [_chunk.submit(0.0) for _ in range(3)]
        for future in futures:
            future.wait()
        began = time.monotonic()
        _wait_for_next(futures, timeout=30.0)
        return time.monotonic() - began

    assert all_done() < 5.0


def test_waiting_wakes_when_the_running_chunk_ends_not_at_the_timeout(prefect_api):
    @flow
    def one_running() -> tuple[float, bool]:
        futures = [_chunk.submit(0.0), _chunk.submit(1.0)]
        futures[0].wait()
        began = time.monotonic()
        _wait_for_next(futures, timeout=60.0)
        return time.monotonic() - began, futures[1].state.is_final()

    waited, ended = one_running()
    assert ended and waited < 30.0
