"""Docker Engines of the bed's own: one dockerd per host namespace, made a two-node swarm.

Each daemon has its own data root, exec root (so its own managed containerd), pid file,
unix socket and an empty config file (never the machine's /etc/docker/daemon.json), and
keeps Docker's default bridge networking and iptables, which live in its namespace. The
swarm is formed as an operator would:

    docker -H unix://<n1>/docker.sock swarm init --advertise-addr <n1 address> \\
        --listen-addr <n1 address>:2377
    docker -H unix://<n2>/docker.sock swarm join --token <worker token> \\
        --advertise-addr <n2 address> --listen-addr <n2 address>:2377 <n1 address>:2377

Teardown removes the services and containers, leaves the swarm, stops each daemon
(SIGTERM, which stops its containers and containerd) and unmounts whatever it left
mounted under its folder.
"""

import contextlib
import json
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.multihost.netbed import Host, NetBed


@dataclass
class Dockerd:
    """One daemon of the bed: its host, folder and the URL its API answers on."""

    host: Host
    folder: Path
    proc: subprocess.Popen[bytes]

    @property
    def socket(self) -> Path:
        return self.folder / "docker.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def cli(self, *args: str, timeout_s: float = 60,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """`docker -H <this daemon> args…` (a unix socket: reachable from any namespace)."""
        done = subprocess.run(["docker", "-H", self.url, *args], capture_output=True,
                              text=True, timeout=timeout_s)
        if check and done.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)} on {self.host.name} exited "
                               f"{done.returncode}: {(done.stderr or done.stdout).strip()}")
        return done


def start_dockerd(bed: NetBed, host: Host, folder: Path, timeout_s: float = 60) -> Dockerd:
    """dockerd in `host`'s namespace with everything of its own under `folder`."""
    for sub in ("data", "exec"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    config = folder / "daemon.json"
    config.write_text("{}")
    proc = bed.popen(host, ["dockerd", "--config-file", str(config),
                            "--data-root", str(folder / "data"),
                            "--exec-root", str(folder / "exec"),
                            "--pidfile", str(folder / "docker.pid"),
                            "-H", f"unix://{folder / 'docker.sock'}"],
                     log=folder / "dockerd.log")
    daemon = Dockerd(host=host, folder=folder, proc=proc)
    deadline = time.monotonic() + timeout_s
    while daemon.cli("info", "--format", "{{.ServerVersion}}", check=False).returncode != 0:
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = (folder / "dockerd.log").read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError(f"dockerd in {host.name} did not start:\n" + "\n".join(tail))
        time.sleep(0.3)
    return daemon


def form_swarm(manager: Dockerd, worker: Dockerd) -> dict[str, str]:
    """A two-node swarm: `manager` inits, `worker` joins; returns node id → address."""
    addr = manager.host.address
    manager.cli("swarm", "init", "--advertise-addr", addr, "--listen-addr", f"{addr}:2377")
    token = manager.cli("swarm", "join-token", "-q", "worker").stdout.strip()
    worker.cli("swarm", "join", "--token", token, "--advertise-addr", worker.host.address,
               "--listen-addr", f"{worker.host.address}:2377", f"{addr}:2377")
    return node_addresses(manager, want=2)


def node_addresses(manager: Dockerd, want: int, timeout_s: float = 30) -> dict[str, str]:
    """Node id → address of the swarm's ready nodes, once `want` of them are ready."""
    deadline = time.monotonic() + timeout_s
    while True:
        ids = manager.cli("node", "ls", "-q").stdout.split()
        nodes = json.loads(manager.cli("node", "inspect", *ids).stdout)
        ready = {n["ID"]: n["Status"]["Addr"] for n in nodes
                 if n["Status"]["State"] == "ready"}
        if len(ready) >= want:
            return ready
        if time.monotonic() > deadline:
            raise RuntimeError(f"swarm has {len(ready)} ready node(s), not {want}")
        time.sleep(0.3)


def load_image(tag: str, daemons: list[Dockerd], folder: Path) -> None:
    """The machine engine's image `tag` into each daemon (`docker save | docker load`)."""
    archive = folder / "image.tar"
    subprocess.run(["docker", "save", "-o", str(archive), tag], check=True,
                   capture_output=True, timeout=300)
    loads = [subprocess.Popen(["docker", "-H", d.url, "load", "-i", str(archive)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for d in daemons]
    for daemon, load in zip(daemons, loads, strict=True):
        out, _ = load.communicate(timeout=300)
        if load.returncode != 0:
            raise RuntimeError(f"docker load on {daemon.host.name}: {out.decode().strip()}")
    archive.unlink()


def stop_dockerd(daemon: Dockerd) -> None:
    """Services and containers gone, swarm left, daemon stopped, its mounts undone."""
    if daemon.proc.poll() is None:
        services = daemon.cli("service", "ls", "-q", check=False).stdout.split()
        if services:
            daemon.cli("service", "rm", *services, check=False)
        containers = daemon.cli("ps", "-aq", check=False).stdout.split()
        if containers:
            daemon.cli("rm", "-f", *containers, check=False, timeout_s=120)
        daemon.cli("swarm", "leave", "--force", check=False)
        daemon.proc.send_signal(signal.SIGTERM)
        try:
            daemon.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.proc.kill()
            daemon.proc.wait()
    unmount_under(daemon.folder)


def unmount_under(folder: Path) -> None:
    """Lazily unmount every mount below `folder`, deepest first."""
    prefix = str(folder.resolve()) + "/"
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for point in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            subprocess.run(["umount", "-l", point], capture_output=True, timeout=30)
