"""`Client` and `AsyncClient`: one method per API call, answers parsed into the server's models.

Built on httpx, which gives a sync and an async client with one API (aiohttp has no sync
client), so both share the request descriptions in `operations` and the retry rule here.
"""

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, BinaryIO, Literal, TypeVar

import httpx

from greenroom_client import operations as ops
from greenroom_client.errors import ApiError, TaskFailed, Unreachable
from schemas.auth import ApiKeyCreated, ApiKeyOut, LoginResponse, ModelOut, UserOut
from schemas.bazaar import ReplicaLogs, StatusResponse
from schemas.embed_jobs import EmbedJob
from schemas.models import ModelSource
from schemas.tasks import DeploymentConfig, TaskKind, TaskResponse, TaskStatus

T = TypeVar("T")
RETRY_STATUSES = frozenset({429, 503})
MAX_RETRY_WAIT_S = 30.0
TERMINAL = frozenset(status.value for status in TaskStatus if status.terminal)
DEFAULT_GATEWAY_PORT = 8001


def retry_after(response: httpx.Response, attempt: int) -> float:
    """Seconds to wait before retrying: the Retry-After header (seconds or a date), else
    an exponential backoff; never more than MAX_RETRY_WAIT_S."""
    header = response.headers.get("Retry-After", "").strip()
    wait: float = 0.5 * 2 ** attempt
    if header.isdigit():
        wait = float(header)
    elif header:
        with contextlib.suppress(TypeError, ValueError):
            wait = (parsedate_to_datetime(header) - datetime.now(UTC)).total_seconds()
    return max(0.0, min(wait, MAX_RETRY_WAIT_S))


def _answer(op: ops.Op[T], response: httpx.Response) -> T:
    if response.status_code >= 400:
        try:
            body = response.json()
            raise ApiError(response.status_code, str(body.get("message", response.reason_phrase)),
                           body.get("detail"))
        except (ValueError, AttributeError):
            raise ApiError(response.status_code, response.text[:200] or response.reason_phrase
                           ) from None
    return op.parse(response.content)


def _request_args(op: ops.Op[Any], token: str | None) -> dict[str, Any]:
    headers = dict(op.headers)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    args: dict[str, Any] = {"headers": headers}
    if op.content is not None:
        args["content"] = op.content
    elif op.json is not None:
        args["json"] = op.json
    return args


def _default_gateway(api_url: str) -> str:
    """The API's URL with the gateway's default port (8001) in place of the API's."""
    parsed = httpx.URL(api_url)
    return str(parsed.copy_with(port=DEFAULT_GATEWAY_PORT)).rstrip("/")


def _url(client: "_Common", op: ops.Op[Any]) -> str:
    """Where `op` goes: a path on the API, or an absolute URL on the gateway."""
    return client.gateway_url + op.path if op.plane == "gateway" else op.path


class _Common:
    def __init__(self, base_url: str, token: str | None = None, *, timeout_s: float = 30.0,
                 retries: int = 4, gateway_url: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        # Inference goes to the gateway; by default the API's host on the gateway's port.
        self.gateway_url = (gateway_url or _default_gateway(self.base_url)).rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self.retries = retries


class Client(_Common):
    """Synchronous client: `with Client(url, token) as gr: gr.deploy("alice/minilm")`."""

    def __init__(self, base_url: str, token: str | None = None, *, timeout_s: float = 30.0,
                 retries: int = 4, transport: httpx.BaseTransport | None = None,
                 gateway_url: str | None = None) -> None:
        super().__init__(base_url, token, timeout_s=timeout_s, retries=retries,
                         gateway_url=gateway_url)
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s, transport=transport)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def call(self, op: ops.Op[T]) -> T:
        """Send one operation, retrying 429/503 answers; its answer, parsed."""
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(op.method, _url(self, op),
                                              **_request_args(op, self.token))
            except httpx.TransportError as exc:
                raise Unreachable(f"cannot reach {self.base_url}: {exc}") from exc
            if response.status_code not in RETRY_STATUSES or attempt == self.retries:
                return _answer(op, response)
            time.sleep(retry_after(response, attempt))
        raise AssertionError("unreachable")

    def login(self, username: str, password: str) -> LoginResponse:
        answer = self.call(ops.login(username, password))
        self.token = answer.access_token
        return answer

    def change_password(self, current: str, new: str) -> LoginResponse:
        """Every older token of the user stops working; this client keeps the fresh one."""
        answer = self.call(ops.change_password(current, new))
        self.token = answer.access_token
        return answer

    def logout(self) -> None:
        """Revoke every token of the user, this client's included."""
        self.call(ops.logout())
        self.token = None

    def me(self) -> UserOut:
        return self.call(ops.me())

    def register_model(self, name: str, source: ModelSource,
                       access_level: str = "private") -> ModelOut:
        return self.call(ops.register_model(name, source, access_level))

    def upload_model(self, model: str, archive: bytes) -> ModelOut:
        return self.call(ops.upload_model(model, archive))

    def list_models(self) -> list[ModelOut]:
        return self.call(ops.list_models())

    def show_model(self, model: str) -> ModelOut:
        return self.call(ops.show_model(model))

    def deploy(self, model: str, config: DeploymentConfig | None = None,
               task_id: str | None = None) -> TaskResponse:
        return self.call(ops.deploy(model, config, task_id))

    def delete(self, model: str, task_id: str | None = None) -> TaskResponse:
        return self.call(ops.delete(model, task_id))

    def scale(self, model: str, replicas: int) -> TaskResponse:
        return self.call(ops.scale(model, replicas))

    def rollback(self, model: str, generation: int | None = None) -> TaskResponse:
        return self.call(ops.rollback(model, generation))

    def task(self, task_id: str, kind: TaskKind = TaskKind.deploy) -> TaskResponse:
        return self.call(ops.task(task_id, kind))

    def latest_task(self, model: str, kind: TaskKind = TaskKind.deploy) -> TaskResponse:
        return self.call(ops.latest_task(model, kind))

    def status(self, model: str) -> StatusResponse:
        return self.call(ops.status(model))

    def logs(self, model: str, tail: int | None = None) -> list[ReplicaLogs]:
        return self.call(ops.logs(model, tail))

    def create_key(self, name: str, expires_in_days: int | None = None,
                   lane: Literal["interactive", "batch"] = "interactive",
                   requests_per_s: float | None = None,
                   tokens_per_s: float | None = None) -> ApiKeyCreated:
        return self.call(ops.create_key(name, expires_in_days, lane, requests_per_s,
                                        tokens_per_s))

    def list_keys(self) -> list[ApiKeyOut]:
        return self.call(ops.list_keys())

    def revoke_key(self, key_id: int) -> None:
        self.call(ops.revoke_key(key_id))

    def embed(self, model: str, inputs: list[str]) -> list[list[float]]:
        return [row["embedding"] for row in self.call(ops.embed(model, inputs))["data"]]

    def create_embed_job(self, model: str, corpus: bytes, generation: int | None = None,
                         dimensions: int | None = None, normalize: bool = True) -> EmbedJob:
        return self.call(ops.create_embed_job(model, corpus, generation, dimensions, normalize))

    def embed_job(self, job_id: str) -> EmbedJob:
        return self.call(ops.embed_job(job_id))

    def embed_jobs(self) -> list[EmbedJob]:
        return self.call(ops.embed_jobs())

    def cancel_embed_job(self, job_id: str) -> EmbedJob:
        return self.call(ops.cancel_embed_job(job_id))

    def download_embed_results(self, job_id: str, out: BinaryIO, form: str = "jsonl") -> int:
        """Stream a done job's results into `out`; the bytes written."""
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        written = 0
        try:
            with self._http.stream("GET", ops.embed_job_results_path(job_id, form),
                                   headers=headers, timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    _answer(ops.embed_job(job_id), response)
                for chunk in response.iter_bytes():
                    out.write(chunk)
                    written += len(chunk)
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach {self.base_url}: {exc}") from exc
        return written

    def wait(self, task: TaskResponse, timeout_s: float = 600.0, poll_s: float = 0.5,
             on_update: Callable[[TaskResponse], None] | None = None,
             raise_on_failure: bool = True) -> TaskResponse:
        """Poll the task until it ends; TaskFailed if it did not end done (unless told not to)."""
        deadline = time.monotonic() + timeout_s
        while True:
            if on_update is not None:
                on_update(task)
            if task.status in TERMINAL:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"task {task.task_id} still {task.status} after {timeout_s:g}s")
            time.sleep(poll_s)
            task = self.task(str(task.task_id), task.kind)
        if raise_on_failure and task.status != "done":
            raise TaskFailed(task)
        return task


class AsyncClient(_Common):
    """Asynchronous client: `async with AsyncClient(url, token) as gr: await gr.deploy(...)`."""

    def __init__(self, base_url: str, token: str | None = None, *, timeout_s: float = 30.0,
                 retries: int = 4, transport: httpx.AsyncBaseTransport | None = None,
                 gateway_url: str | None = None) -> None:
        super().__init__(base_url, token, timeout_s=timeout_s, retries=retries,
                         gateway_url=gateway_url)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout_s,
                                       transport=transport)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def call(self, op: ops.Op[T]) -> T:
        """Send one operation, retrying 429/503 answers; its answer, parsed."""
        for attempt in range(self.retries + 1):
            try:
                response = await self._http.request(op.method, _url(self, op),
                                                    **_request_args(op, self.token))
            except httpx.TransportError as exc:
                raise Unreachable(f"cannot reach {self.base_url}: {exc}") from exc
            if response.status_code not in RETRY_STATUSES or attempt == self.retries:
                return _answer(op, response)
            await asyncio.sleep(retry_after(response, attempt))
        raise AssertionError("unreachable")

    async def login(self, username: str, password: str) -> LoginResponse:
        answer = await self.call(ops.login(username, password))
        self.token = answer.access_token
        return answer

    async def change_password(self, current: str, new: str) -> LoginResponse:
        """Every older token of the user stops working; this client keeps the fresh one."""
        answer = await self.call(ops.change_password(current, new))
        self.token = answer.access_token
        return answer

    async def logout(self) -> None:
        """Revoke every token of the user, this client's included."""
        await self.call(ops.logout())
        self.token = None

    async def me(self) -> UserOut:
        return await self.call(ops.me())

    async def register_model(self, name: str, source: ModelSource,
                             access_level: str = "private") -> ModelOut:
        return await self.call(ops.register_model(name, source, access_level))

    async def upload_model(self, model: str, archive: bytes) -> ModelOut:
        return await self.call(ops.upload_model(model, archive))

    async def list_models(self) -> list[ModelOut]:
        return await self.call(ops.list_models())

    async def show_model(self, model: str) -> ModelOut:
        return await self.call(ops.show_model(model))

    async def deploy(self, model: str, config: DeploymentConfig | None = None,
                     task_id: str | None = None) -> TaskResponse:
        return await self.call(ops.deploy(model, config, task_id))

    async def delete(self, model: str, task_id: str | None = None) -> TaskResponse:
        return await self.call(ops.delete(model, task_id))

    async def scale(self, model: str, replicas: int) -> TaskResponse:
        return await self.call(ops.scale(model, replicas))

    async def rollback(self, model: str, generation: int | None = None) -> TaskResponse:
        return await self.call(ops.rollback(model, generation))

    async def task(self, task_id: str, kind: TaskKind = TaskKind.deploy) -> TaskResponse:
        return await self.call(ops.task(task_id, kind))

    async def latest_task(self, model: str, kind: TaskKind = TaskKind.deploy) -> TaskResponse:
        return await self.call(ops.latest_task(model, kind))

    async def status(self, model: str) -> StatusResponse:
        return await self.call(ops.status(model))

    async def logs(self, model: str, tail: int | None = None) -> list[ReplicaLogs]:
        return await self.call(ops.logs(model, tail))

    async def create_key(self, name: str, expires_in_days: int | None = None,
                         lane: Literal["interactive", "batch"] = "interactive",
                         requests_per_s: float | None = None,
                         tokens_per_s: float | None = None) -> ApiKeyCreated:
        return await self.call(ops.create_key(name, expires_in_days, lane, requests_per_s,
                                              tokens_per_s))

    async def list_keys(self) -> list[ApiKeyOut]:
        return await self.call(ops.list_keys())

    async def revoke_key(self, key_id: int) -> None:
        await self.call(ops.revoke_key(key_id))

    async def create_embed_job(self, model: str, corpus: bytes, generation: int | None = None,
                               dimensions: int | None = None,
                               normalize: bool = True) -> EmbedJob:
        return await self.call(ops.create_embed_job(model, corpus, generation, dimensions,
                                                    normalize))

    async def embed_job(self, job_id: str) -> EmbedJob:
        return await self.call(ops.embed_job(job_id))

    async def cancel_embed_job(self, job_id: str) -> EmbedJob:
        return await self.call(ops.cancel_embed_job(job_id))

    async def embed(self, model: str, inputs: list[str]) -> list[list[float]]:
        answer = await self.call(ops.embed(model, inputs))
        return [row["embedding"] for row in answer["data"]]

    async def wait(self, task: TaskResponse, timeout_s: float = 600.0, poll_s: float = 0.5,
                   on_update: Callable[[TaskResponse], Awaitable[None] | None] | None = None,
                   raise_on_failure: bool = True) -> TaskResponse:
        """Poll the task until it ends; TaskFailed if it did not end done (unless told not to)."""
        deadline = time.monotonic() + timeout_s
        while True:
            if on_update is not None:
                pending = on_update(task)
                if pending is not None:
                    await pending
            if task.status in TERMINAL:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"task {task.task_id} still {task.status} after {timeout_s:g}s")
            await asyncio.sleep(poll_s)
            task = await self.task(str(task.task_id), task.kind)
        if raise_on_failure and task.status != "done":
            raise TaskFailed(task)
        return task
