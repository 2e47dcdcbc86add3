"""Every API call the client makes, as a description both clients send.

An `Op` holds the request and the type its answer parses into, so the sync and the async
client share one definition of each call and differ only in how they send it.
"""

from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar
from urllib.parse import quote, urlencode

from pydantic import TypeAdapter

from schemas.auth import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyOut,
    LoginRequest,
    LoginResponse,
    ModelOut,
    PasswordChange,
    UserOut,
)
from schemas.bazaar import ReplicaLogs, StatusResponse
from schemas.embed_jobs import NDJSON, EmbedJob
from schemas.models import ModelCreate, ModelSource
from schemas.tasks import DeploymentConfig, TaskKind, TaskRequest, TaskResponse

T = TypeVar("T")


@dataclass(frozen=True)
class Op(Generic[T]):
    method: str
    path: str
    answer: Any  # the type the body parses into; None: ignore the body
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # "gateway": inference, which the gateway serves (its own process and port), not the API.
    plane: str = "api"

    def parse(self, body: bytes) -> T:
        if self.answer is None:
            return None  # type: ignore[return-value]
        parsed: T = TypeAdapter(self.answer).validate_json(body)
        return parsed


def _ref(model: str) -> str:
    """A model reference in a path: `owner/name` keeps its one slash."""
    return "/".join(quote(part, safe="") for part in model.split("/", 1))


def login(username: str, password: str) -> Op[LoginResponse]:
    body = LoginRequest(username=username, password=password)
    return Op("POST", "/api/v2/auth/login", LoginResponse, body.model_dump())


def change_password(current: str, new: str) -> Op[LoginResponse]:
    body = PasswordChange(current_password=current, new_password=new)
    return Op("POST", "/api/v2/users/me/password", LoginResponse, body.model_dump())


def logout() -> Op[None]:
    return Op("POST", "/api/v2/auth/logout", None)


def me() -> Op[UserOut]:
    return Op("GET", "/api/v2/users/me", UserOut)


def register_model(name: str, source: ModelSource, access_level: str = "private") -> Op[ModelOut]:
    body = ModelCreate(name=name, source=source, access_level=access_level)  # type: ignore[arg-type]
    return Op("POST", "/api/v2/models", ModelOut, body.model_dump(mode="json", exclude_none=True))


def upload_model(model: str, archive: bytes) -> Op[ModelOut]:
    """A model directory as a tar.gz (the security work's upload route)."""
    return Op("POST", f"/api/v2/models/{_ref(model)}/upload", ModelOut, content=archive,
              headers={"Content-Type": "application/gzip"})


def list_models() -> Op[list[ModelOut]]:
    return Op("GET", "/api/v2/models", list[ModelOut])


def show_model(model: str) -> Op[ModelOut]:
    return Op("GET", f"/api/v2/models/{_ref(model)}", ModelOut)


def _task_body(model: str, config: DeploymentConfig | None, task_id: str | None) -> Any:
    body = TaskRequest(id=task_id, embedding_model_id=model,
                       config=config or DeploymentConfig())
    return body.model_dump(mode="json", exclude_none=True, exclude_defaults=True) | {
        "embedding_model_id": model}


def deploy(model: str, config: DeploymentConfig | None = None,
           task_id: str | None = None) -> Op[TaskResponse]:
    return Op("POST", "/deploy", TaskResponse, _task_body(model, config, task_id))


def delete(model: str, task_id: str | None = None) -> Op[TaskResponse]:
    return Op("POST", "/delete", TaskResponse, _task_body(model, None, task_id))


def scale(model: str, replicas: int) -> Op[TaskResponse]:
    """A scale task; servers without the route answer 404 or 405."""
    return Op("POST", "/scale", TaskResponse,
              _task_body(model, DeploymentConfig(replicas=replicas), None))


def rollback(model: str, generation: int | None = None) -> Op[TaskResponse]:
    """A rollback task: to `generation`, else the one that served before the serving one."""
    body = {"generation": generation} if generation is not None else {}
    return Op("POST", f"/api/v2/deploy/{_ref(model)}/rollback", TaskResponse, body)


def task(task_id: str, kind: TaskKind = TaskKind.deploy) -> Op[TaskResponse]:
    return Op("GET", f"/{kind.value}/{quote(task_id, safe='')}", TaskResponse)


def latest_task(model: str, kind: TaskKind = TaskKind.deploy) -> Op[TaskResponse]:
    return Op("GET", f"/{kind.value}-status/{_ref(model)}", TaskResponse)


def status(model: str) -> Op[StatusResponse]:
    return Op("GET", f"/api/v2/deploy/{_ref(model)}/status", StatusResponse)


def logs(model: str, tail: int | None = None) -> Op[list[ReplicaLogs]]:
    query = "" if tail is None else f"?tail={int(tail)}"
    return Op("GET", f"/api/v2/deploy/{_ref(model)}/logs{query}", list[ReplicaLogs])


def create_key(name: str, expires_in_days: int | None = None,
               lane: Literal["interactive", "batch"] = "interactive",
               requests_per_s: float | None = None,
               tokens_per_s: float | None = None) -> Op[ApiKeyCreated]:
    body = ApiKeyCreate(name=name, expires_in_days=expires_in_days, lane=lane,
                        requests_per_s=requests_per_s, tokens_per_s=tokens_per_s)
    return Op("POST", "/api/v2/auth/api-keys", ApiKeyCreated,
              body.model_dump(mode="json", exclude_none=True))


def list_keys() -> Op[list[ApiKeyOut]]:
    return Op("GET", "/api/v2/auth/api-keys", list[ApiKeyOut])


def revoke_key(key_id: int) -> Op[None]:
    return Op("DELETE", f"/api/v2/auth/api-keys/{key_id}", None)


def embed(model: str, inputs: list[str]) -> Op[dict[str, Any]]:
    return Op("POST", "/v1/embeddings", dict[str, Any], {"model": model, "input": inputs},
              plane="gateway")


def create_embed_job(model: str, corpus: bytes, generation: int | None = None,
                     dimensions: int | None = None, normalize: bool = True) -> Op[EmbedJob]:
    """A bulk embedding job of a JSONL corpus ({"id", "text"} a line)."""
    query: dict[str, Any] = {"model": model}
    query |= {"generation": generation} if generation is not None else {}
    query |= {"dimensions": dimensions} if dimensions is not None else {}
    query |= {} if normalize else {"normalize": "false"}
    return Op("POST", f"/api/v2/embed-jobs?{urlencode(query)}", EmbedJob, content=corpus,
              headers={"Content-Type": NDJSON})


def embed_job(job_id: str) -> Op[EmbedJob]:
    return Op("GET", f"/api/v2/embed-jobs/{quote(job_id, safe='')}", EmbedJob)


def embed_jobs() -> Op[list[EmbedJob]]:
    return Op("GET", "/api/v2/embed-jobs", list[EmbedJob])


def cancel_embed_job(job_id: str) -> Op[EmbedJob]:
    """Cancel a job that has not ended; remove one that has."""
    return Op("DELETE", f"/api/v2/embed-jobs/{quote(job_id, safe='')}", EmbedJob)


def embed_job_results_path(job_id: str, form: str = "jsonl") -> str:
    """Where a done job's results are read (streamed by the clients, not parsed)."""
    return f"/api/v2/embed-jobs/{quote(job_id, safe='')}/results?format={quote(form)}"
