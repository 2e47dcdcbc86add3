"""The HAProxy configuration the controller starts it with: written once, never reloaded.

Backends cannot be created at run time in HAProxy 2.6, so the configuration declares a
fixed pool of `slots` backends (`slot0`…), each with `servers_per_slot` servers in
maintenance. The controller gives each served generation of a public deployment a slot,
points servers of it at its replicas, and points the deployment's names at it in the
`direct` map; one `set map` moves a name to a new generation. Everything the map does
not name (private models, `/v1/embeddings`, feedback, requests carrying a token,
unknown names) goes to the `python` backend: the Python gateway processes the controller also runs.
Each slot backend sets the replica secret of the generation it serves (the `secrets` map,
schemas/replica_auth.py) on every request it passes on.

A canary (issue 27) is split by server weights: each slot `slotK` has a `splitK` backend
with two servers, `cK_1` (the serving generation, slotK) and `cK_2` (the candidate's
slot, named in the `via` map), weighted `100 - w` and `w` (`set weight`). Their address
is the `canary` frontend on a unix socket in the folder, which sends each request to the
slot its server names (`http-send-name-header` → the `via` map): the secret and the
labels a slot sets depend on the generation, and HAProxy sets request headers before it
picks a server, so a generation's requests must pass through its own slot backend.
The `canary` frontend logs one line per request (`slotK Ta`) into the `traffic` ring,
which HAProxy forwards over a stream to the controller's `traffic.sock`: the latency
histogram per generation (gateway/haproxy/traffic.py).

Why a fixed pool rather than reloads: after a reload, the old worker keeps serving its
in-flight requests but the new worker's `scur` no longer counts them, so the drain
would see zeros too early; one worker for the controller's whole life keeps `scur` the
whole truth.
"""

from dataclasses import dataclass
from pathlib import Path

from schemas import replica_auth
from schemas.gateway import GENERATION_HEADER, REVISION_HEADER

# The TEI routes passed straight to a replica: (methods, path after /serve/{name}).
DIRECT_POST = r"^/serve/[^/]+/?(embed|embed_all|tokenize|decode|v1/embeddings)?$"
DIRECT_GET = r"^/serve/[^/]+/(health|info|metrics)$"


# The client's address, as HAProxy saw it, on every request it passes to the Python
# gateways (set, so a client's own value is replaced): they serve /metrics to loopback
# callers only, and HAProxy itself calls from loopback (review M1).
CLIENT_HEADER = "X-Greenroom-Client"
# The split server a canary's request went through (`cK_1`, `cK_2`), set by HAProxy itself
# (`http-send-name-header` replaces a client's own value) for the `canary` frontend.
VIA_HEADER = "X-Greenroom-Via"


def slot_name(index: int) -> str:
    return f"slot{index}"


def _json_error(status: int, message: str, error_type: str) -> str:
    body = (f'{{"status_code":{status},"message":"{message}","detail":null,'
            f'"error":"{message}","error_type":"{error_type}"}}')
    return (f"    http-error status {status} content-type application/json "
            f"string '{body}'\n")


@dataclass(frozen=True)
class Layout:
    """Where one HAProxy instance keeps its files, and what it listens on."""

    folder: Path
    host: str
    port: int
    stats_port: int
    gateways: list[int]  # ports of the Python gateway processes behind it
    slots: int
    servers_per_slot: int = 16
    threads: int | None = None
    timeout_s: float = 60.0

    @property
    def config(self) -> Path:
        return self.folder / "haproxy.cfg"

    @property
    def admin_socket(self) -> Path:
        return self.folder / "admin.sock"

    @property
    def master_socket(self) -> Path:
        return self.folder / "master.sock"

    @property
    def direct_map(self) -> Path:
        return self.folder / "direct.map"

    @property
    def replicas_map(self) -> Path:
        return self.folder / "replicas.map"

    @property
    def generations_map(self) -> Path:
        """Slot backend → the generation it serves (issue 26: X-Greenroom-Generation)."""
        return self.folder / "generations.map"

    @property
    def revisions_map(self) -> Path:
        """Slot backend → `r<revision>` its generation pinned (X-Greenroom-Revision)."""
        return self.folder / "revisions.map"

    @property
    def via_map(self) -> Path:
        """Split server (`cK_1`, `cK_2`) → the slot backend its requests go to."""
        return self.folder / "via.map"

    @property
    def split_socket(self) -> Path:
        """The `canary` frontend: what the split backends' servers connect to."""
        return self.folder / "split.sock"

    @property
    def traffic_socket(self) -> Path:
        """Where the `traffic` ring forwards the `canary` frontend's log lines (a unix
        stream socket the controller listens on)."""
        return self.folder / "traffic.sock"

    @property
    def secrets_map(self) -> Path:
        """Slot backend → its generation's replica secret; filled only through the admin
        socket (the file stays empty, 0600)."""
        return self.folder / "secrets.map"


def split_name(index: int) -> str:
    """The backend that splits slot `index`'s deployment with a candidate by weight."""
    return f"split{index}"


def split_servers(index: int) -> tuple[str, str]:
    """`splitK`'s servers: the serving generation's (to slotK) and the candidate's."""
    return f"c{index}_1", f"c{index}_2"


def server_names(index: int, layout: Layout) -> list[str]:
    """The servers slot `index` declares (`server-template s<index>_ 1-N`)."""
    return [f"s{index}_{j}" for j in range(1, layout.servers_per_slot + 1)]


def render(layout: Layout) -> str:
    """The whole configuration; see the module docstring for its shape."""
    threads = f"    nbthread {layout.threads}\n" if layout.threads else ""
    timeout = f"{int(layout.timeout_s * 1000)}ms"
    lookup = f"path,field(3,/),map({layout.direct_map})"  # /serve/{name}/… → slot backend

    def secret(index: int) -> str:
        return f"%[str({slot_name(index)}),map({layout.secrets_map})]"

    def label(index: int, labels: Path) -> str:
        return f"str({slot_name(index)}),map({labels})"

    text = f"""global
    master-worker
    stats socket {layout.admin_socket} mode 600 level admin expose-fd listeners
    stats timeout 10s
{threads}    # HAProxy's own notices (servers changing state) on stderr; no per-request log lines
    # but the `canary` frontend's, into the `traffic` ring.
    log stderr format short local0 notice

# The canary frontend's log lines, held in HAProxy's memory (1 MB: tens of thousands of
# lines) and forwarded over one stream to the controller: a controller busy for a moment
# slows the stream, it does not drop lines (a unix datagram socket queues only
# net.unix.max_dgram_qlen lines, 10 on the machine it was measured on).
ring traffic
    format raw
    size 1048576
    timeout connect 5s
    timeout server 10s
    server controller unix@{layout.traffic_socket}

defaults
    mode http
    option http-keep-alive
    option http-buffer-request
    timeout connect 2s
    timeout client {timeout}
    timeout server {timeout}
    timeout http-request 10s
    timeout http-keep-alive 60s
    timeout queue 5s
    # A replica that cannot be connected to is retried on another: up to 3 attempts, each
    # after the first on a different server. Only then: a request once sent to a replica is
    # never sent again (review M6: `empty-response` resent it when a replica died on it).
    retries 2
    retry-on conn-failure
    option redispatch 1

frontend data
    bind {layout.host}:{layout.port}
    acl has_token req.hdr(authorization) -m found
    acl direct_post path_reg {DIRECT_POST}
    acl direct_get path_reg {DIRECT_GET}
    # The gateway's own metrics name private deployments: loopback callers, or a token (the
    # Python gateway checks it). The path decoded, so /%6detrics is /metrics too (review M1).
    acl loopback src 127.0.0.0/8 ::1
    acl metrics_path path,url_dec -m reg ^/+metrics/*$
    http-request deny deny_status 403 if metrics_path !loopback !has_token
    http-request set-var(txn.slot) {lookup} if METH_POST direct_post !has_token
    http-request set-var(txn.slot) {lookup} if METH_GET direct_get !has_token
    http-request replace-path ^/serve/[^/]+/?(.*)$ /\\1 if {{ var(txn.slot) -m found }}
    use_backend %[var(txn.slot)] if {{ var(txn.slot) -m found }}
    default_backend python

backend python
    balance leastconn
    http-request set-header {CLIENT_HEADER} %[src]
"""
    for i, port in enumerate(layout.gateways):
        text += f"    server gw{i} 127.0.0.1:{port}\n"
    for index in range(layout.slots):
        revision = label(index, layout.revisions_map)
        text += f"""
backend {slot_name(index)}
    balance leastconn
    server-template s{index}_ 1-{layout.servers_per_slot} 127.0.0.1:9 disabled
    http-request set-header {replica_auth.HEADER} {secret(index)}
    http-response set-header X-Greenroom-Replica %[srv_name,map({layout.replicas_map})]
    http-response set-header {GENERATION_HEADER} %[{label(index, layout.generations_map)}]
    http-response set-header {REVISION_HEADER} %[{revision}] if {{ {revision} -m found }}
"""
        text += _json_error(502, "replica answered badly or closed the connection", "Backend")
        text += _json_error(503, "no replica of the deployment could take the request",
                            "Unhealthy")
        text += _json_error(504, "replica did not answer in time", "Backend")
    text += f"""
frontend canary
    bind unix@{layout.split_socket} mode 600
    log ring@traffic len 128 format raw local0 info
    log-format "%b %Ta"
    http-request set-var(txn.via) req.hdr({VIA_HEADER}),map({layout.via_map})
    http-request deny deny_status 503 unless {{ var(txn.via) -m found }}
    http-request del-header {VIA_HEADER}
    use_backend %[var(txn.via)]
"""
    for index in range(layout.slots):
        text += f"""
backend {split_name(index)}
    balance roundrobin
    http-send-name-header {VIA_HEADER}
    # Its server is HAProxy's own `canary` frontend: any idle connection may carry any
    # request (the client's first one too, which `safe` sends on a new connection).
    http-reuse always
    server-template c{index}_ 1-2 unix@{layout.split_socket}
"""
    text += f"""
frontend stats
    bind 127.0.0.1:{layout.stats_port}
    http-request use-service prometheus-exporter if {{ path /metrics }}
    stats enable
    stats uri /stats
    stats refresh 5s
"""
    return text


def write(layout: Layout) -> None:
    layout.folder.mkdir(parents=True, exist_ok=True)
    layout.direct_map.write_text("")
    layout.replicas_map.write_text("")
    layout.secrets_map.write_text("")
    layout.generations_map.write_text("")
    layout.revisions_map.write_text("")
    # Both split servers of a slot name the slot itself until a canary names its candidate.
    layout.via_map.write_text("".join(f"{server} {slot_name(index)}\n"
                                      for index in range(layout.slots)
                                      for server in split_servers(index)))
    layout.secrets_map.chmod(0o600)
    layout.config.write_text(render(layout))
