"""The CLI's API commands: they talk HTTP to the API like any user, through `Client`.

Added to `greenroom`'s parser by `add_commands`; `--json` prints the API's answer as JSON.
"""

import argparse
import getpass
import io
import logging
import os
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError
from rich.console import Console
from rich.table import Table

from greenroom_client.client import Client
from greenroom_client.errors import ApiError, GreenroomError, TaskFailed, Unreachable
from launch import cli_config, cli_rollout
from launch.cli_progress import JobProgress, Watcher
from schemas.embed_jobs import EmbedJob
from schemas.models import ModelSource
from schemas.settings import Settings
from schemas.tasks import DeploymentConfig, TaskKind, TaskResponse

Command = Callable[[Client, argparse.Namespace, Console], int]
LOG_POLL_S = 2.0


def _print_json(value: Any) -> None:
    if isinstance(value, BaseModel):
        print(value.model_dump_json(indent=2))
    else:
        print(TypeAdapter(Any).dump_json(value, indent=2).decode())


def _rows(console: Console, title: str, columns: list[str], rows: list[list[Any]]) -> None:
    view = Table(title=title)
    for column in columns:
        view.add_column(column)
    for row in rows:
        view.add_row(*("" if v is None else str(v) for v in row))
    console.print(view)


# --- accounts -------------------------------------------------------------------------

def login(gr: Client, args: argparse.Namespace, console: Console) -> int:
    if args.password_file:
        password = Path(args.password_file).read_text().strip()
    else:
        password = os.environ.get("GREENROOM_PASSWORD") or getpass.getpass("password: ")
    answer = gr.login(args.username, password)
    path = _save_token(args, answer)
    if not args.json:
        console.print(f"logged in as {answer.user.username}; token saved to {path} "
                      f"(valid until {answer.expires_at:%Y-%m-%d %H:%M} UTC)", highlight=False)
    return 0


def _save_token(args: argparse.Namespace, answer: Any) -> Path:
    """Save a login answer's token for the next commands; with --json, print what was saved."""
    path = cli_config.save_token(args.settings, answer.access_token)
    if args.json:
        _print_json({"username": answer.user.username, "expires_at": answer.expires_at,
                     "token_file": str(path)})
    return path


def passwd(gr: Client, args: argparse.Namespace, console: Console) -> int:
    """Change your password: every token of yours stops working; the fresh one is saved."""
    current = os.environ.get("GREENROOM_PASSWORD") or getpass.getpass("current password: ")
    new = os.environ.get("GREENROOM_NEW_PASSWORD") or getpass.getpass("new password: ")
    answer = gr.change_password(current, new)
    path = _save_token(args, answer)
    if not args.json:
        console.print(f"password changed for {answer.user.username}; every older token is "
                      f"revoked, the new one saved to {path}", highlight=False)
    return 0


def logout(gr: Client, args: argparse.Namespace, console: Console) -> int:
    """Revoke every token of yours (API keys are kept)."""
    gr.logout()
    if args.json:
        _print_json({"revoked": "every token"})
    else:
        console.print("every token of yours is revoked; log in again with "
                      "`greenroom login USERNAME`")
    return 0


def keys_create(gr: Client, args: argparse.Namespace, console: Console) -> int:
    key = gr.create_key(args.name, args.expires_in_days, args.lane, args.requests_per_s,
                        args.tokens_per_s)
    if args.json:
        _print_json(key)
    else:
        console.print(f"API key {key.id} ({key.name}); shown once, keep it:\n{key.key}",
                      highlight=False)
    return 0


def keys_list(gr: Client, args: argparse.Namespace, console: Console) -> int:
    keys = gr.list_keys()
    if args.json:
        _print_json(keys)
    else:
        _rows(console, "API keys", ["id", "name", "created", "expires", "revoked"],
              [[k.id, k.name, k.created_at, k.expires_at, k.revoked_at] for k in keys])
    return 0


def keys_revoke(gr: Client, args: argparse.Namespace, console: Console) -> int:
    gr.revoke_key(args.key_id)
    if args.json:
        _print_json({"revoked": args.key_id})
    else:
        console.print(f"API key {args.key_id} revoked")
    return 0


# --- models ---------------------------------------------------------------------------

def models_register(gr: Client, args: argparse.Namespace, console: Console) -> int:
    source = ModelSource(backend=args.backend, location=args.location, dimension=args.dimension)
    model = gr.register_model(args.model_name, source,
                              "public" if args.public else args.access_level)
    if args.json:
        _print_json(model)
    else:
        console.print(f"registered {model.identifier} ({model.id}, {model.access_level})",
                      highlight=False)
    return 0


def _archive(path: Path) -> bytes:
    if path.is_file():
        return path.read_bytes()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for child in sorted(path.iterdir()):
            tar.add(child, arcname=child.name)
    return buffer.getvalue()


def models_upload(gr: Client, args: argparse.Namespace, console: Console) -> int:
    path = Path(args.path)
    if not path.exists():
        raise GreenroomError(f"{path} does not exist")
    model = gr.upload_model(args.model, _archive(path))
    if args.json:
        _print_json(model)
    else:
        console.print(f"uploaded {path} to {model.identifier}", highlight=False)
    return 0


def models_list(gr: Client, args: argparse.Namespace, console: Console) -> int:
    found = gr.list_models()
    if args.json:
        _print_json(found)
    else:
        _rows(console, "models", ["model", "access", "backend", "location", "created"],
              [[m.identifier, m.access_level, m.source.get("backend"), m.source.get("location"),
                f"{m.created_at:%Y-%m-%d %H:%M}"] for m in found])
    return 0


def models_show(gr: Client, args: argparse.Namespace, console: Console) -> int:
    model = gr.show_model(args.model)
    if args.json:
        _print_json(model)
    else:
        _rows(console, model.identifier, ["field", "value"],
              [[k, v] for k, v in model.model_dump(mode="json").items()])
    return 0


# --- tasks ----------------------------------------------------------------------------

def _deploy_config(args: argparse.Namespace) -> DeploymentConfig:
    env = dict(item.split("=", 1) for item in args.env or [])
    fields: dict[str, Any] = {"replicas": args.replicas, "memory": args.memory,
                              "deployment_name": args.name, "env": env,
                              "deploy_timeout_s": args.deploy_timeout}
    try:
        fields["rollout"] = cli_rollout.config(args)
    except argparse.ArgumentTypeError as exc:  # a ValidationError says which key itself
        raise GreenroomError(str(exc)) from None
    return DeploymentConfig(**{k: v for k, v in fields.items() if v not in (None, {})})


def _endpoint(gr: Client, task: TaskResponse) -> str:
    name = task.metadata.get("deployment_name")
    if not name:
        return ""
    return (f"served at {gr.gateway_url}{task.metadata.get('endpoint', f'/serve/{name}/embed')}"
            f" and {gr.gateway_url}/v1/embeddings (model {name!r})")


def _follow(gr: Client, task: TaskResponse, args: argparse.Namespace, console: Console) -> int:
    if not args.wait:
        if args.json:
            _print_json(task)
        else:
            console.print(f"{task.kind} task {task.task_id} {task.status}; follow it with "
                          f"`greenroom tasks show {task.task_id}`", highlight=False)
        return 0
    err = Console(stderr=True) if args.json else console
    with Watcher(err) as watcher:
        task = gr.wait(task, args.timeout, on_update=watcher.update, raise_on_failure=False)
    watcher.finish(task)
    if args.json:
        _print_json(task)
    elif task.status == "done":
        console.print(f"{task.kind} done. " + _endpoint(gr, task), highlight=False)
    else:
        console.print(f"{task.kind} {task.status}: {task.detail}", highlight=False)
    return 0 if task.status == "done" else 1


def deploy(gr: Client, args: argparse.Namespace, console: Console) -> int:
    return _follow(gr, gr.deploy(args.model, _deploy_config(args)), args, console)


def delete(gr: Client, args: argparse.Namespace, console: Console) -> int:
    return _follow(gr, gr.delete(args.model), args, console)


def scale(gr: Client, args: argparse.Namespace, console: Console) -> int:
    try:
        task = gr.scale(args.model, args.replicas)
    except ApiError as exc:
        if exc.status in (404, 405):
            raise GreenroomError("scaling is not available on this server "
                                 "(it has no scale route); redeploy with --replicas") from None
        raise
    return _follow(gr, task, args, console)


def rollback(gr: Client, args: argparse.Namespace, console: Console) -> int:
    """Back to generation --to (default: the one that served before the serving one)."""
    return _follow(gr, gr.rollback(args.model, args.to), args, console)


def _show_task(task: TaskResponse, console: Console) -> None:
    meta = task.metadata
    rows: list[list[Any]] = [
        ["task", task.task_id], ["kind", task.kind], ["model", task.embedding_model_id],
        ["status", task.status], ["phase", task.phase], ["detail", task.detail],
        ["created", task.created_at], ["updated", task.updated_at]]
    rows += [[f"timing {k}", f"{v:.2f}s"] for k, v in meta.get("timings", {}).items()]
    rows += [[k, v] for k, v in meta.items() if k != "timings"]
    _rows(console, f"{task.kind} task", ["field", "value"], rows)


def tasks_show(gr: Client, args: argparse.Namespace, console: Console) -> int:
    try:
        task = gr.task(args.task_id, TaskKind.deploy)
    except ApiError as exc:
        if exc.status != 404:
            raise
        task = gr.task(args.task_id, TaskKind.delete)
    if args.json:
        _print_json(task)
    else:
        _show_task(task, console)
    return 0


def status(gr: Client, args: argparse.Namespace, console: Console) -> int:
    state = gr.status(args.model)
    task = gr.latest_task(args.model)
    if args.json:
        _print_json({"deployment": state.model_dump(mode="json"),
                     "latest_deploy_task": task.model_dump(mode="json")})
        return 0
    console.print(f"{args.model}: {state.status}", highlight=False)
    for line in state.errors:
        console.print(f"  error: {line}", highlight=False)
    for line in state.warnings:
        console.print(f"  warning: {line}", highlight=False)
    _show_task(task, console)
    return 0


def _new_lines(before: list[str], now: list[str]) -> list[str]:
    """The lines of `now` after what `before` ended with (the API sends a sliding tail)."""
    if not before:
        return now
    for start in range(len(now), 0, -1):
        if now[:start] == before[-start:]:
            return now[start:]
    return now


# Lines a search by request or task id reads back (the API's most).
SEARCH_TAIL = 10_000


def logs(gr: Client, args: argparse.Namespace, console: Console) -> int:
    seen: dict[int, list[str]] = {}
    # --request / --task: only the lines naming that id (issue 31: a replica logs each
    # forwarded request's request_id and trace_id, and its start-up the task that started it).
    wanted = [i for i in (args.request, args.task) if i]
    while True:
        found = gr.logs(args.model, SEARCH_TAIL if wanted else None)
        if wanted:
            for replica in found:
                replica.stdout = _naming(replica.stdout, wanted)
                replica.stderr = _naming(replica.stderr, wanted)
        if args.json and not args.follow:
            _print_json(found)
            return 0
        for index, replica in enumerate(found):
            lines = (replica.stderr + replica.stdout).splitlines()
            for line in _new_lines(seen.get(index, []), lines):
                print(f"[replica {index}] {line}", flush=True)
            seen[index] = lines
        if not args.follow:
            return 0
        time.sleep(LOG_POLL_S)


def _naming(text: str, ids: list[str]) -> str:
    return "".join(line for line in text.splitlines(keepends=True)
                   if all(i in line for i in ids))


# --- bulk embedding jobs ----------------------------------------------------------------

ENDED = ("done", "failed", "cancelled")


def embed(gr: Client, args: argparse.Namespace, console: Console) -> int:
    """`greenroom embed MODEL corpus.jsonl -o out.jsonl`: start a job, show its progress,
    download its results (`--format npy`: the vectors as .npy and their ids beside)."""
    corpus = Path(args.corpus)
    if not corpus.is_file():
        raise GreenroomError(f"{corpus} is not a file")
    job = gr.create_embed_job(args.model, corpus.read_bytes(), args.generation,
                              args.dimensions, not args.no_normalize)
    if args.detach:
        if args.json:
            _print_json(job)
        else:
            console.print(f"embed job {job.id} accepted ({job.counts.total:,} inputs, "
                          f"generation {job.generation})")
        return 0
    try:
        job = _watch_job(gr, job, args.timeout, console)
    except KeyboardInterrupt:
        console.print(f"stopped watching; embed job {job.id} goes on (DELETE it to cancel)")
        return 130
    if job.status.value != "done":
        print(f"greenroom embed: job {job.id} {job.status.value}: {job.detail or ''}",
              file=sys.stderr)
        return 1
    written = _download_results(gr, job, Path(args.output), args.format)
    if args.json:
        _print_json(job)
    else:
        console.print(f"embed job {job.id}: {job.counts.done:,} embedded, "
                      f"{job.counts.failed:,} failed (each with its reason), {job.tokens:,} "
                      f"tokens on generation {job.generation}; wrote {', '.join(written)}")
    return 0


def _watch_job(gr: Client, job: EmbedJob, timeout_s: float, console: Console) -> EmbedJob:
    """Poll the job with a progress bar until it ends."""
    deadline = time.monotonic() + timeout_s
    with JobProgress(console) as progress:
        while True:
            progress.update(job)
            if job.status.value in ENDED:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"embed job {job.id} still {job.status.value} after "
                                   f"{timeout_s:g}s; it goes on (greenroom embed-jobs list)")
            time.sleep(0.5)
            job = gr.embed_job(str(job.id))


def _download_results(gr: Client, job: EmbedJob, out: Path, form: str) -> list[str]:
    with out.open("wb") as sink:
        gr.download_embed_results(str(job.id), sink, form)
    written = [str(out)]
    if form == "npy":
        ids = out.with_name(out.stem + ".ids.jsonl")
        with ids.open("wb") as sink:
            gr.download_embed_results(str(job.id), sink, "ids")
        written.append(str(ids))
    return written


def embed_jobs_list(gr: Client, args: argparse.Namespace, console: Console) -> int:
    found = gr.embed_jobs()
    if args.json:
        _print_json(found)
        return 0
    _rows(console, "embed jobs", ["id", "model", "gen", "status", "done", "failed", "total",
                                  "rate/s", "ETA s"],
          [[j.id, j.model, j.generation, j.status.value, j.counts.done, j.counts.failed,
            j.counts.total, j.rate, j.eta_s] for j in found])
    return 0


def embed_jobs_cancel(gr: Client, args: argparse.Namespace, console: Console) -> int:
    job = gr.cancel_embed_job(args.job_id)
    if args.json:
        _print_json(job)
    else:
        console.print(f"embed job {job.id}: {job.status.value}")
    return 0


def _embed_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    cmd = sub.add_parser("embed", parents=[common],
                         help="embed a JSONL corpus ({\"id\", \"text\"} a line) as a job")
    cmd.add_argument("model", help="owner/name")
    cmd.add_argument("corpus", help="the JSONL file")
    cmd.add_argument("-o", "--output", required=True, help="where the results go")
    cmd.add_argument("--format", choices=["jsonl", "npy"], default="jsonl",
                     help="npy: the vectors as .npy, their ids in OUTPUT's .ids.jsonl")
    cmd.add_argument("--generation", type=int, help="the generation (default: the serving one)")
    cmd.add_argument("--dimensions", type=int, help="keep the first this many components")
    cmd.add_argument("--no-normalize", action="store_true", help="raw vectors, not unit ones")
    cmd.add_argument("--detach", action="store_true", help="start the job and return")
    cmd.add_argument("--timeout", type=float, default=86400.0, help="seconds to wait")
    cmd.set_defaults(api=embed)
    jobs = sub.add_parser("embed-jobs", help="your embed jobs").add_subparsers(
        dest="action", required=True)
    jobs.add_parser("list", parents=[common], help="your embed jobs with their progress"
                    ).set_defaults(api=embed_jobs_list)
    cmd = jobs.add_parser("cancel", parents=[common],
                          help="cancel a job (or remove an ended one and its files)")
    cmd.add_argument("job_id")
    cmd.set_defaults(api=embed_jobs_cancel)


# --- wiring ---------------------------------------------------------------------------

def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print the API's answer as JSON")
    common.add_argument("--api-url", help="the API (default: GREENROOM_API_URL, this folder's "
                        "`greenroom up`, or api_host:api_port)")
    return common


def _task_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", action="store_true", help="show progress until it ends")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds --wait waits")


def _deploy_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    cmd = sub.add_parser("deploy", parents=[common], help="deploy a model (green rollout)")
    cmd.add_argument("model", help="owner/name")
    cmd.add_argument("--replicas", type=int)
    cmd.add_argument("--memory", type=int, help="MB per replica")
    cmd.add_argument("--name", help="deployment name (the URL's /serve/NAME)")
    cmd.add_argument("--env", action="append", metavar="KEY=VALUE")
    cmd.add_argument("--deploy-timeout", type=float, help="health-check deadline, seconds")
    cli_rollout.add_options(cmd)
    _task_options(cmd)
    cmd.set_defaults(api=deploy)


def _model_parsers(models: Any, common: argparse.ArgumentParser) -> None:
    upload = models.add_parser("upload", parents=[common],
                               help="upload a model directory (or a .tar.gz) to a model")
    upload.add_argument("model")
    upload.add_argument("path")
    upload.set_defaults(api=models_upload)
    models.add_parser("list", parents=[common], help="models you can read").set_defaults(
        api=models_list)
    show = models.add_parser("show", parents=[common], help="one model")
    show.add_argument("model")
    show.set_defaults(api=models_show)


def extend_register(reg: argparse.ArgumentParser) -> None:
    """`models register NAME`: over HTTP as the logged-in user (`--owner`: straight to the
    database, the operator's older form)."""
    reg.add_argument("model_name", nargs="?", help="name of the new model (yours)")
    reg.add_argument("--public", action="store_true", help="same as --access-level public")
    reg.add_argument("--json", action="store_true", help="print the API's answer as JSON")
    reg.add_argument("--api-url", help="the API (default: this folder's `greenroom up`)")


def add_commands(sub: Any, models: Any) -> None:
    """Add the API commands to `greenroom`'s subparsers and its `models` subparsers."""
    common = _common()
    cmd = sub.add_parser("login", parents=[common], help="log in; saves a token here")
    cmd.add_argument("username")
    cmd.add_argument("--password-file", help="read the password from this file")
    cmd.set_defaults(api=login)
    sub.add_parser("passwd", parents=[common], help="change your password (revokes your "
                   "tokens, saves a fresh one)").set_defaults(api=passwd)
    sub.add_parser("logout", parents=[common],
                   help="revoke every token of yours").set_defaults(api=logout)
    _model_parsers(models, common)
    _deploy_parser(sub, common)
    cmd = sub.add_parser("delete", parents=[common], help="undeploy a model")
    cmd.add_argument("model")
    _task_options(cmd)
    cmd.set_defaults(api=delete)
    cmd = sub.add_parser("scale", parents=[common], help="change a deployment's replicas")
    cmd.add_argument("model")
    cmd.add_argument("replicas", type=int)
    _task_options(cmd)
    cmd.set_defaults(api=scale)
    cmd = sub.add_parser("rollback", parents=[common],
                         help="go back to an earlier generation (a route flip while it is warm)")
    cmd.add_argument("model")
    cmd.add_argument("--to", type=int, metavar="N",
                     help="the generation (default: the one before the serving one)")
    _task_options(cmd)
    cmd.set_defaults(api=rollback)
    cmd = sub.add_parser("status", parents=[common], help="a model's deployment and last task")
    cmd.add_argument("model")
    cmd.set_defaults(api=status)
    tasks = sub.add_parser("tasks", help="tasks").add_subparsers(dest="action", required=True)
    cmd = tasks.add_parser("show", parents=[common], help="one task, deploy or delete")
    cmd.add_argument("task_id")
    cmd.set_defaults(api=tasks_show)
    cmd = sub.add_parser("logs", parents=[common], help="replica logs of a deployment")
    cmd.add_argument("model")
    cmd.add_argument("--follow", "-f", action="store_true", help="keep printing new lines")
    cmd.add_argument("--request", metavar="ID",
                     help="only lines of this request (its X-Request-Id, or its trace id)")
    cmd.add_argument("--task", metavar="ID", help="only lines naming this task id")
    cmd.set_defaults(api=logs)
    _embed_parsers(sub, common)
    keys = sub.add_parser("keys", help="your API keys").add_subparsers(dest="action",
                                                                       required=True)
    cmd = keys.add_parser("create", parents=[common], help="create an API key; shown once")
    cmd.add_argument("name")
    cmd.add_argument("--expires-in-days", type=int)
    cmd.add_argument("--lane", choices=("interactive", "batch"), default="interactive",
                     help="the key's priority lane: batch for ingestion (issue 29)")
    cmd.add_argument("--requests-per-s", type=float, help="the key's limit per model")
    cmd.add_argument("--tokens-per-s", type=float, help="the key's token limit per model")
    cmd.set_defaults(api=keys_create)
    keys.add_parser("list", parents=[common], help="your API keys").set_defaults(api=keys_list)
    cmd = keys.add_parser("revoke", parents=[common], help="revoke an API key")
    cmd.add_argument("key_id", type=int)
    cmd.set_defaults(api=keys_revoke)


def _one_line(exc: Exception, url: str) -> str:
    if isinstance(exc, Unreachable):
        return f"cannot reach the API at {url}: is `greenroom up` (or the API) running?"
    if isinstance(exc, ApiError):
        hint = "; log in with `greenroom login USERNAME`" if exc.status == 401 else ""
        detail = f" ({exc.detail})" if exc.detail and not isinstance(exc.detail, dict | list) \
            else ""
        return f"{exc.message}{detail} [HTTP {exc.status}]{hint}"
    if isinstance(exc, ValidationError):
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"])
        return f"invalid {where}: {error['msg']}" if where else f"invalid: {error['msg']}"
    return str(exc)


def run(settings: Settings, args: argparse.Namespace) -> None:
    """Run an API command; every failure a user can cause ends as one line and exit 1."""
    url = (args.api_url or cli_config.api_url(settings)).rstrip("/")
    args.settings = settings
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=160)
    try:
        with Client(url, cli_config.token(settings),
                    gateway_url=cli_config.gateway_url(settings)) as gr:
            code = args.api(gr, args, console)
    except TaskFailed as exc:
        code = 1
        print(f"greenroom {args.command}: {exc}", file=sys.stderr)
    except (GreenroomError, ValidationError, OSError, ValueError, TimeoutError) as exc:
        sys.exit(f"greenroom {args.command}: {_one_line(exc, url)}")
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)

