"""``/api/v1/jobs``: the caller's jobs; read and changed only through the library."""

from __future__ import annotations

from aiohttp import web

import pgqueue

from .. import _keys
from .._auth import Principal
from .._errors import ApiError, conflict, forbidden, invalid, not_found
from .._models import (
    ActiveQuery,
    AttemptOut,
    JobCreate,
    JobDetail,
    JobListQuery,
    JobOut,
    JobPage,
    JobPath,
    ProgressOut,
    ProgressPage,
    ProgressQuery,
    RetryBody,
    encode_cursor,
    job_cursor_id,
    progress_cursor_id,
)
from .._routes import ErrorOut, Reply, Routes, json_reply

routes = Routes("jobs")

NOT_FOUND = Reply("no such job, or not the caller's", ErrorOut)
CONFLICT = Reply("the job is not in a state this action may leave", ErrorOut)


def _page(jobs: list[pgqueue.Job], limit: int) -> JobPage:
    next_cursor = encode_cursor("job", jobs[-1].id) if len(jobs) == limit else None
    return JobPage(items=[JobOut.of(j) for j in jobs], next_cursor=next_cursor)


async def visible_job(request: web.Request, principal: Principal, job_id: int) -> pgqueue.Job:
    """The job if the caller may see it; 404 alike for missing and foreign jobs."""
    job = await request.app[_keys.QUEUE].get_job(job_id)
    if job is None or not principal.may_see(job.owner):
        raise not_found(f"job {job_id}")
    return job


@routes.get(
    "/api/v1/jobs/active",
    summary="The caller's unfinished jobs and those finished in the last minutes",
    replies={200: Reply("newest first", JobPage)},
)
async def active_jobs(
    request: web.Request, *, principal: Principal, query: ActiveQuery
) -> web.Response:
    settings = request.app[_keys.SETTINGS]
    jobs = await request.app[_keys.READS].active_jobs(
        None if principal.admin else principal.owner,
        window=settings.active_window,
        before_id=job_cursor_id(query.cursor),
        limit=query.limit,
    )
    return json_reply(_page(jobs, query.limit))


@routes.get(
    "/api/v1/jobs",
    summary="The caller's jobs, newest first, filtered",
    replies={200: Reply("newest first", JobPage), 403: Reply("owner filter not allowed", ErrorOut)},
)
async def list_jobs(
    request: web.Request, *, principal: Principal, query: JobListQuery
) -> web.Response:
    owner = query.owner
    if not principal.admin:
        if owner is not None and owner != principal.owner:
            raise forbidden("only admins may list another owner's jobs")
        owner = principal.owner
    jobs = await request.app[_keys.QUEUE].list_jobs(
        status=query.statuses,
        queue=query.queue,
        task=query.task,
        owner=owner,
        before_id=job_cursor_id(query.cursor),
        limit=query.limit,
    )
    return json_reply(_page(jobs, query.limit))


@routes.get(
    "/api/v1/jobs/{id}",
    summary="One job and its attempt history",
    replies={200: Reply("the job", JobDetail), 404: NOT_FOUND},
)
async def get_job(request: web.Request, *, principal: Principal, path: JobPath) -> web.Response:
    job = await visible_job(request, principal, path.id)
    attempts = await request.app[_keys.QUEUE].attempts(job.id)
    detail = JobDetail.model_validate(
        {
            **JobOut.of(job).model_dump(),
            "attempt_history": [AttemptOut.model_validate(a.to_dict()) for a in attempts],
        }
    )
    return json_reply(detail)


@routes.get(
    "/api/v1/jobs/{id}/progress",
    summary="A job's progress history, oldest first",
    replies={200: Reply("oldest first", ProgressPage), 404: NOT_FOUND},
)
async def job_progress(
    request: web.Request, *, principal: Principal, path: JobPath, query: ProgressQuery
) -> web.Response:
    await visible_job(request, principal, path.id)
    entries = await request.app[_keys.QUEUE].progress_history(
        path.id,
        since=query.since,
        after_id=progress_cursor_id(query.cursor),
        limit=query.limit,
    )
    last = entries[-1].id if len(entries) == query.limit else None
    return json_reply(
        ProgressPage(
            items=[ProgressOut.model_validate(e.to_dict()) for e in entries],
            next_cursor=None if last is None else encode_cursor("progress", last),
        )
    )


def _enqueue_error(exc: pgqueue.InvalidJobError) -> ApiError:
    """A library refusal as a 422 naming the field it is about (the body as a
    whole when the library names none, or one the request cannot set)."""
    field = exc.field if exc.field in JobCreate.model_fields else "body"
    return invalid(field, str(exc))


@routes.post(
    "/api/v1/jobs",
    summary="Enqueue a job owned by the caller",
    replies={
        201: Reply("the new job", JobOut),
        413: Reply("the body is too large", ErrorOut),
    },
)
async def create_job(
    request: web.Request, *, principal: Principal, body: JobCreate
) -> web.Response:
    queue = request.app[_keys.QUEUE]
    options = body.model_dump(exclude={"task", "args"}, exclude_none=True)
    try:
        job_id = await queue.enqueue(body.task, body.args, owner=principal.owner, **options)
    except pgqueue.InvalidJobError as exc:
        raise _enqueue_error(exc) from None
    job = await queue.get_job(job_id)
    if job is None:  # pragma: no cover - deleted between the two statements
        raise not_found(f"job {job_id}")
    return json_reply(JobOut.of(job), status=201, headers={"Location": f"/api/v1/jobs/{job_id}"})


@routes.post(
    "/api/v1/jobs/{id}/cancel",
    summary="Cancel a pending, retrying or running job",
    replies={200: Reply("the cancelled job", JobOut), 404: NOT_FOUND, 409: CONFLICT},
)
async def cancel_job(request: web.Request, *, principal: Principal, path: JobPath) -> web.Response:
    queue = request.app[_keys.QUEUE]
    await visible_job(request, principal, path.id)
    try:
        await queue.cancel(path.id)
    except pgqueue.InvalidTransition as exc:
        raise conflict(str(exc)) from None
    return json_reply(JobOut.of(await visible_job(request, principal, path.id)))


@routes.post(
    "/api/v1/jobs/{id}/retry",
    summary="Run a failed, timed-out, zombie, dead-lettered or cancelled job again",
    replies={200: Reply("the job, pending again", JobOut), 404: NOT_FOUND, 409: CONFLICT},
    body_required=False,
)
async def retry_job(
    request: web.Request, *, principal: Principal, path: JobPath, body: RetryBody
) -> web.Response:
    queue = request.app[_keys.QUEUE]
    await visible_job(request, principal, path.id)
    try:
        await queue.retry(path.id, extra_attempts=body.extra_attempts)
    except pgqueue.InvalidTransition as exc:
        raise conflict(str(exc)) from None
    return json_reply(JobOut.of(await visible_job(request, principal, path.id)))
