"""Bulk embedding jobs (issue 30): `/api/v2/embed-jobs`. A JSONL corpus in, a job that embeds
it on one pinned generation (a task the worker runs), its progress, its results as JSONL
or as a `.npy` with the ids beside it, and cancel."""

from aiohttp import web

from edge.auth.locators import query_param
from edge.auth.rules import OWN, USER, USER_READ
from edge.guard import call_of
from edge.keys import PG, SETTINGS
from edge.responses import json_response
from edge.route_spec import RouteSpec
from schemas.embed_jobs import NDJSON, EmbedJob
from schemas.errors import Invalid
from service.domain import embed_jobs
from service.keys import REDIS

FORMATS = ("jsonl", "npy", "ids")


async def create_job(request: web.Request) -> web.Response:
    """Start a bulk embedding job: a JSONL body of {"id", "text"} lines; 202 with the job."""
    call = call_of(request)
    assert call.model is not None
    job = await embed_jobs.accept(
        request.app[PG], request.app[REDIS], request.app[SETTINGS], call.principal,
        call.model, request.query["model"], dict(request.query), request.content_type,
        request.content.iter_chunked(embed_jobs.CHUNK), request.content_length)
    return json_response(embed_jobs.view(job), 202)


async def list_jobs(request: web.Request) -> web.Response:
    """The caller's jobs, newest first (an administrator's `?all=true`: everyone's)."""
    jobs = await embed_jobs.listed(request.app[PG], call_of(request).principal,
                                   request.query.get("all"))
    return json_response([embed_jobs.view(job) for job in jobs])


async def show_job(request: web.Request) -> web.Response:
    """The job: status, counts, tokens, rate and time left."""
    job = await embed_jobs.owned(request.app[PG], call_of(request).principal,
                                 request.match_info["job_id"])
    return json_response(embed_jobs.view(job))


async def delete_job(request: web.Request) -> web.Response:
    """Cancel a job that has not ended; remove one that has (its files and the job)."""
    pool = request.app[PG]
    job = await embed_jobs.owned(pool, call_of(request).principal,
                                 request.match_info["job_id"])
    ended = await embed_jobs.cancel_or_remove(pool, request.app[SETTINGS], job)
    return json_response(embed_jobs.view(ended))


async def job_results(request: web.Request) -> web.StreamResponse:
    """The results of a done job, in input order: JSONL of {"id", "embedding"} (a failed
    input: {"id", "error"}); `?format=npy` the embedded rows as one float32 .npy,
    `?format=ids` their ids in the same order (one JSON value a line)."""
    form = request.query.get("format", "jsonl")
    if form not in FORMATS:
        raise Invalid(f"invalid request: format must be one of {', '.join(FORMATS)}",
                      [{"loc": ["query", "format"], "msg": "unknown format",
                        "type": "value_error"}])
    job = await embed_jobs.owned(request.app[PG], call_of(request).principal,
                                 request.match_info["job_id"])
    path = embed_jobs.results_path(request.app[SETTINGS], job)
    response = web.StreamResponse()
    if form == "jsonl":
        response.content_type = NDJSON
        response.content_length = path.stat().st_size
        chunks = embed_jobs.jsonl_chunks(path)
    elif form == "npy":
        response.content_type = "application/octet-stream"
        response.headers["Content-Disposition"] = f'attachment; filename="{job.id}.npy"'
        chunks = embed_jobs.npy_rows(path, ids=False)
    else:
        response.content_type = NDJSON
        chunks = embed_jobs.npy_rows(path, ids=True)
    await response.prepare(request)
    if form == "npy":
        await response.write(embed_jobs.npy_header(job.done, job.dimension or 0))
    async for chunk in chunks:
        await response.write(chunk)
    await response.write_eof()
    return response


JOB = "/api/v2/embed-jobs/{job_id}"
ROUTES = [
    RouteSpec("POST", "/api/v2/embed-jobs", create_job, USER_READ, None, EmbedJob,
              query_param("model"), 202,
              query=(("model", True), ("generation", False, {
                  "type": "integer", "minimum": 1, "maximum": embed_jobs.MAX_GENERATION}),
                     ("dimensions", False, {"type": "integer", "minimum": 1,
                                            "maximum": 65536}),
                     ("normalize", False, {"type": "string", "enum": ["true", "false"]}),
                     ("input_from", False, {"type": "string", "format": "uuid"})),
              raw_body=("application/octet-stream", NDJSON),
              summary="Start a bulk embedding job (JSONL in)"),
    RouteSpec("GET", "/api/v2/embed-jobs", list_jobs, USER, None, list[EmbedJob],
              query=(("all", False, {"type": "string", "enum": ["true", "false"]}),),
              summary="List the caller's embedding jobs"),
    RouteSpec("GET", JOB, show_job, OWN, None, EmbedJob, summary="An embedding job"),
    RouteSpec("GET", f"{JOB}/results", job_results, OWN, None, str,
              query=(("format", False, {"type": "string", "enum": list(FORMATS)}),),
              response_media=NDJSON, response_alternatives=("application/octet-stream",),
              summary="An embedding job's results"),
    RouteSpec("DELETE", JOB, delete_job, OWN, None, EmbedJob,
              summary="Cancel an embedding job (or remove an ended one)"),
]
