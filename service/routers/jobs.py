"""Fit and adaptation jobs: status, listing, cancellation."""

from __future__ import annotations

import dataclasses
import time
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool

from patchshift.service.auth import ADMIN, READ, require
from patchshift.service.deps import JobsDep, WorkerDep
from patchshift.service.http_errors import NotFound
from patchshift.service.job_store import (
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    UNFINISHED,
    Job,
)
from patchshift.service.names import NAME_MAX_LENGTH, NAME_PATTERN
from patchshift.service.schemas import JobOut, error_responses

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
MAX_WAIT_SECONDS = 600
POLL_SECONDS = 0.2


def job_out(job: Job) -> JobOut:
    return JobOut(**dataclasses.asdict(job))


@router.get(
    "",
    response_model=list[JobOut],
    dependencies=[Depends(require(READ))],
    responses=error_responses(401, 403, 422),
)
def list_jobs(
    jobs: JobsDep,
    model: Annotated[str | None, Query(pattern=NAME_PATTERN, max_length=NAME_MAX_LENGTH)] = None,
    status: Literal[QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED] | None = None,  # type: ignore[valid-type]
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[JobOut]:
    return [job_out(j) for j in jobs.list(model, status, limit)]


@router.get(
    "/{job_id}",
    response_model=JobOut,
    dependencies=[Depends(require(READ))],
    responses=error_responses(401, 403, 404, 422),
)
async def get_job(
    job_id: str,
    jobs: JobsDep,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=MAX_WAIT_SECONDS,
            description="seconds to wait for the job to end before answering (long poll); "
            "the answer is the job as it is then",
        ),
    ] = 0,
) -> JobOut:
    deadline = time.monotonic() + wait
    while True:
        job = await run_in_threadpool(jobs.get, job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        if job.status not in UNFINISHED or time.monotonic() >= deadline:
            return job_out(job)
        await anyio.sleep(min(POLL_SECONDS, max(deadline - time.monotonic(), 0)))


@router.delete(
    "/{job_id}",
    response_model=JobOut,
    status_code=202,
    dependencies=[Depends(require(ADMIN))],
    responses=error_responses(401, 403, 404, 503),
)
def cancel_job(job_id: str, worker: WorkerDep) -> JobOut:
    """Queued jobs end at once; a running job stops at its next step (poll until 'cancelled')."""
    return job_out(worker.cancel(job_id))
