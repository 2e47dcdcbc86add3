"""A multi-host test bed on one machine: hosts are Linux network namespaces, each with its
own address on a private subnet, joined by veth pairs to one bridge (iproute2).

Names carry a per-session suffix (bridge `grb<sfx>`, namespaces `gr<sfx>-<host>`, veths
`grv<sfx><n>`), so two runs side by side never collide; the same subnet on two bridges
does not either, since the host itself has no address on them. Teardown kills every
process in the bed's namespaces (all of them started by the bed), then deletes the
namespaces, the bridge and its one firewall rule, also after a failure or at exit.

Processes run in a host with `nsenter --net` rather than `ip netns exec`: the latter
also remounts /sys for the namespace, which hides the cgroup mounts (dockerd then fails
with "Devices cgroup isn't mounted"; process replicas would lose their memory cgroups).

The test process itself can step into a host (`inside`): sockets it opens there stay in
that namespace, so a test reaches the hosts' addresses without the machine having any
address on the bridge.
"""

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SUBNET = "10.231.0"
PREFIX_LEN = 24
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def missing_requirement() -> str | None:
    """Why this machine cannot make the bed (a skip reason), or None."""
    if os.geteuid() != 0:
        return "the multi-host test bed needs root (network namespaces, a bridge)"
    for tool in ("ip", "nsenter"):
        if shutil.which(tool) is None:
            return f"the multi-host test bed needs `{tool}` (iproute2, util-linux)"
    return None


# The namespace the bed was made from (the machine's): its `ip` and `iptables` commands run
# there even while the test's thread is inside one of the hosts.
_home_fd: int | None = None


def _enter_home() -> None:
    if _home_fd is not None and _libc.setns(_home_fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns to the machine's namespace")


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    global _home_fd
    if _home_fd is None:
        _home_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=30,
                          pass_fds=(_home_fd,), preexec_fn=_enter_home)


def _setns(path: str) -> None:
    """Move the calling thread into the network namespace at `path`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns {path}: {os.strerror(errno)}")
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class Host:
    """One namespace of the bed: its name, its address on the bridge."""

    name: str
    netns: str
    address: str

    @property
    def netns_path(self) -> str:
        return f"/run/netns/{self.netns}"

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run inside this host's network namespace."""
        return ["nsenter", f"--net={self.netns_path}", *argv]


class NetBed:
    """The bridge and its hosts; `close()` (also at exit) removes everything it made."""

    def __init__(self, suffix: str | None = None) -> None:
        self.suffix = suffix or f"{os.getpid():x}"[-5:]
        self.bridge = f"grb{self.suffix}"
        self.hosts: dict[str, Host] = {}
        self._procs: list[subprocess.Popen[bytes]] = []
        self._rule = ["FORWARD", "-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"]
        self._closed = False
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        atexit.register(self.close)
        _run("ip", "link", "set", self.bridge, "up")
        # Bridged frames pass the host's iptables FORWARD chain (br_netfilter), whose policy
        # Docker sets to DROP: let this bridge's own traffic through, and only it.
        if shutil.which("iptables"):
            _run("iptables", "-I", *self._rule[:1], "1", *self._rule[1:], check=False)

    def add_host(self, name: str) -> Host:
        """A namespace `name` with address 10.231.0.(10 + n) on the bridge, loopback up."""
        index = len(self.hosts) + 1
        host = Host(name=name, netns=f"gr{self.suffix}-{name}",
                    address=f"{SUBNET}.{10 + index}")
        veth = f"grv{self.suffix}{index}"
        _run("ip", "netns", "add", host.netns)
        self.hosts[name] = host
        _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0",
             "netns", host.netns)
        _run("ip", "link", "set", veth, "master", self.bridge, "up")
        _run("ip", "-n", host.netns, "addr", "add", f"{host.address}/{PREFIX_LEN}", "dev", "eth0")
        _run("ip", "-n", host.netns, "link", "set", "eth0", "up")
        _run("ip", "-n", host.netns, "link", "set", "lo", "up")
        return host

    def popen(self, host: Host, argv: list[str], *, log: Path,
              env: dict[str, str] | None = None, cwd: Path | None = None,
              user: str | None = None) -> subprocess.Popen[bytes]:
        """Start `argv` in `host` (as `user` if given), output to `log`; killed at close."""
        if user is not None:
            argv = ["runuser", "-u", user, "--", *argv]
        with log.open("ab") as out:
            proc = subprocess.Popen(host.command(argv), env=env, cwd=cwd, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._procs.append(proc)
        return proc

    def run(self, host: Host, argv: list[str], *,
            timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        """Run `argv` in `host` to its end; raises on a non-zero exit, with its output."""
        done = subprocess.run(host.command(argv), capture_output=True, text=True,
                              timeout=timeout_s)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} in {host.name} exited {done.returncode}: "
                               f"{(done.stderr or done.stdout).strip()}")
        return done

    @contextlib.contextmanager
    def inside(self, host: Host) -> Iterator[None]:
        """The calling thread in `host`'s namespace for the block (sockets opened there stay
        there); back to where it was after."""
        back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            _setns(host.netns_path)
            try:
                yield
            finally:
                if _libc.setns(back, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back to the original namespace")
        finally:
            os.close(back)

    def pids_in(self, host: Host) -> list[int]:
        """Every process whose network namespace is `host`'s."""
        done = _run("ip", "netns", "pids", host.netns, check=False)
        return [int(p) for p in done.stdout.split() if p.isdigit()]

    def close(self) -> None:
        """Kill the bed's processes (by pid, each one the bed's), delete its namespaces,
        bridge and firewall rule. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for proc in self._procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        self._wait_procs(5)
        # Whatever else lives in the namespaces (replicas, containerd shims) came from them.
        for _ in range(3):
            left = [pid for host in self.hosts.values() for pid in self.pids_in(host)]
            if not left:
                break
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.3)
        self._wait_procs(5)
        for host in self.hosts.values():
            _run("ip", "netns", "del", host.netns, check=False)
        _run("ip", "link", "del", self.bridge, check=False)
        if shutil.which("iptables"):
            _run("iptables", "-D", *self._rule, check=False)

    def _wait_procs(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for proc in self._procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
