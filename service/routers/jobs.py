"""Fit and adaptation jobs: status, listing, cancellation."""

from __future__ import annotations

import dataclasses

from fastapi import APIRouter, Depends, Query, Request

from ..auth import ADMIN, READ, require
from ..errors import NotFound
from ..jobs import Job
from ..schemas import JobOut

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def job_out(job: Job) -> JobOut:
    return JobOut(**dataclasses.asdict(job))


@router.get("", response_model=list[JobOut], dependencies=[Depends(require(READ))])
def list_jobs(
    request: Request, model: str | None = None, status: str | None = None, limit: int = Query(100, ge=1, le=1000)
) -> list[JobOut]:
    return [job_out(j) for j in request.app.state.jobs.list(model, status, limit)]


@router.get("/{job_id}", response_model=JobOut, dependencies=[Depends(require(READ))])
def get_job(request: Request, job_id: str) -> JobOut:
    job = request.app.state.jobs.get(job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r}")
    return job_out(job)


@router.delete("/{job_id}", response_model=JobOut, status_code=202, dependencies=[Depends(require(ADMIN))])
def cancel_job(request: Request, job_id: str) -> JobOut:
    """Queued jobs end at once; a running job stops at its next step (poll until 'cancelled')."""
    return job_out(request.app.state.worker.cancel(job_id))
