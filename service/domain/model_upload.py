"""Bring your own model: a tar.gz or zip of a sentence-transformers folder, into the store.

The archive is streamed to disk under a size bound, unpacked into a scratch folder with every
member checked (no absolute paths, no `..`, no links, no devices, bounded count and size;
tarfile's "data" filter as a second layer), the result checked for a model (config.json and
safetensors weights; pickled weights, which run code when loaded, only if an administrator
allows them), then moved into `<store>/<model id>/<revision>/` in one rename: every upload is
a new immutable revision (db/revisions.py), and the files a serving generation loads are never
replaced. Whatever goes wrong, the
scratch files are removed: a refused archive leaves nothing behind.
"""

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import lzma
import os
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from uuid import uuid4

import asyncpg

from db import models, revisions
from db.errors import UniqueViolation
from db.models import Model
from schemas.errors import Conflict, GreenroomError, Invalid, TooLarge, UnsupportedType
from schemas.file_modes import private_dir
from schemas.settings import Settings
from service.domain import quotas, store_space, upload_lease
from service.domain.upload_lease import INCOMING

CHUNK = 1 << 20
# While an archive streams in, the store's free space is looked at again after each this much.
ROOM_EVERY = 64 << 20
PICKLED = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
# Code a model folder could carry for a loader to import: never accepted in an upload.
CODE = (".py", ".pyc", ".pyo", ".pyd", ".so")
# The only package whose classes an uploaded modules.json may name.
MODULE_PACKAGE = "sentence_transformers."


@dataclass(frozen=True, slots=True)
class Limits:
    max_upload_bytes: int
    max_files: int
    max_unpacked_bytes: int
    allow_pickled: bool
    # What the owner's store quota leaves (None: no quota, an administrator's model).
    quota_left_bytes: int | None = None
    # Raises if writing that many more bytes would take the store's disk below its floor.
    room: Callable[[int], None] | None = None


def _past_quota(limits: Limits, size: int, what: str) -> None:
    if limits.quota_left_bytes is not None and size > limits.quota_left_bytes:
        raise _bad(f"{what} is past the {limits.quota_left_bytes // 2**20:,} MB your store "
                   "quota leaves (GREENROOM_QUOTA_STORE_MB)", TooLarge)


def _bad(message: str, kind: type[GreenroomError] = Invalid) -> GreenroomError:
    return kind(f"upload refused: {message}")


async def receive(chunks: AsyncIterator[bytes], scratch: Path, limits: Limits) -> Path:
    """Stream the body to `scratch/archive`; 413 past the bound."""
    target = scratch / "archive"
    size = checked = 0
    with target.open("wb") as out:
        async for chunk in chunks:
            size += len(chunk)
            if size > limits.max_upload_bytes:
                raise _bad(f"archive is larger than {limits.max_upload_bytes // 2**20} MB "
                           "(GREENROOM_MAX_UPLOAD_MB)", TooLarge)
            _past_quota(limits, size, "the archive")
            if limits.room is not None and size - checked >= ROOM_EVERY:
                limits.room(0)
                checked = size
            out.write(chunk)
    if size == 0:
        # No bytes are no archive: refused as a body of another type is (415).
        raise _bad("the request body is empty, not a tar.gz, tar or zip archive",
                   UnsupportedType)
    return target


def _member_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith(("/", "\\")):
        raise _bad(f"member {name!r} has an absolute path")
    if ".." in path.parts:
        raise _bad(f"member {name!r} escapes the folder with '..'")
    return path


def _count(total: list[int], size: int, limits: Limits) -> None:
    total[0] += 1
    total[1] += size
    if total[0] > limits.max_files:
        raise _bad(f"archive holds more than {limits.max_files} files")
    if total[1] > limits.max_unpacked_bytes:
        raise _bad(f"archive unpacks to more than {limits.max_unpacked_bytes // 2**20} MB")
    _past_quota(limits, total[1], "what the archive unpacks to")


def _room_for(total: list[int], limits: Limits) -> None:
    if limits.room is not None:
        limits.room(total[1])


def _unpack_tar(archive: Path, into: Path, limits: Limits) -> None:
    total = [0, 0]
    with tarfile.open(archive) as tar:
        members = []
        for member in tar:
            _member_path(member.name)
            if member.issym() or member.islnk():
                raise _bad(f"member {member.name!r} is a link; links are not accepted")
            if not (member.isfile() or member.isdir()):
                raise _bad(f"member {member.name!r} is a device, FIFO or other special file")
            _count(total, member.size, limits)
            members.append(member)
        _room_for(total, limits)
        tar.extractall(into, members=members, filter="data")


def _unpack_zip(archive: Path, into: Path, limits: Limits) -> None:
    total = [0, 0]
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:
            _member_path(info.filename)
            kind = stat.S_IFMT(info.external_attr >> 16)  # 0: no Unix type recorded
            if kind == stat.S_IFLNK:
                raise _bad(f"member {info.filename!r} is a link; links are not accepted")
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise _bad(f"member {info.filename!r} is a device, FIFO or other special file")
            _count(total, info.file_size, limits)
        _room_for(total, limits)
        for info in infos:
            zf.extract(info, into)  # reads at most file_size bytes of each member


# What a damaged, encrypted (RuntimeError) or deflate64 (NotImplementedError) archive raises.
DAMAGED = (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error, lzma.LZMAError,
           NotImplementedError, RuntimeError, ValueError)


def _reason(exc: BaseException) -> str:
    """The error's kind and text, never a server path (the scratch folder, a file's name)."""
    text = (exc.strerror or "") if isinstance(exc, OSError) else str(exc)
    return type(exc).__name__ if not text or "/" in text else text


def unpack(archive: Path, into: Path, limits: Limits) -> Path:
    """Unpack safely; returns the model folder (the archive's root, or its one top folder)."""
    into.mkdir()
    try:
        if tarfile.is_tarfile(archive):
            _unpack_tar(archive, into, limits)
        elif zipfile.is_zipfile(archive):
            _unpack_zip(archive, into, limits)
        else:
            raise _bad("the body is not a tar.gz, tar or zip archive", UnsupportedType)
    except DAMAGED as exc:
        raise _bad(f"the archive is damaged, encrypted or uses an unsupported compression "
                   f"({_reason(exc)})") from None
    entries = [p for p in into.iterdir() if p.name not in ("__MACOSX",)]
    if len(entries) == 1 and entries[0].is_dir() and not (into / "config.json").exists():
        return entries[0]
    return into


def check_model(folder: Path, limits: Limits) -> list[str]:
    """The weight files, if the folder is a loadable sentence-transformers model; else 422."""
    if not (folder / "config.json").is_file():
        raise _bad("no config.json at the top of the model folder")
    files = [p for p in folder.rglob("*") if p.is_file()]
    code = sorted(str(p.relative_to(folder)) for p in files if p.suffix.lower() in CODE)
    if code:
        raise _bad(f"{', '.join(code)}: a model folder may not carry code (.py and "
                   "compiled modules are refused)")
    _check_modules(folder / "modules.json")
    safe = [p for p in files if p.suffix == ".safetensors"]
    pickled = [p for p in files if p.suffix in PICKLED]
    if pickled and not limits.allow_pickled:
        names = ", ".join(sorted(p.name for p in pickled))
        raise _bad(f"pickled weights ({names}) can run code when loaded; convert them to "
                   "safetensors (an administrator may allow them with ?allow_pickle=true)")
    weights = safe + pickled
    if not weights:
        raise _bad("no weights (model.safetensors) in the model folder")
    return sorted(str(p.relative_to(folder)) for p in weights)


def _check_modules(path: Path) -> None:
    """modules.json may name sentence_transformers' own classes only: a loader that imports
    another type would run the model's code (sentence-transformers < 6 did so unasked)."""
    if not path.is_file():
        return
    try:
        modules = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError):
        raise _bad("modules.json is not valid JSON") from None
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise _bad("modules.json must be a list of modules")
    foreign = sorted({str(m.get("type")) for m in modules
                      if not (isinstance(m.get("type"), str)
                              and m["type"].startswith(MODULE_PACKAGE))})
    if foreign:
        raise _bad(f"modules.json names module types outside {MODULE_PACKAGE}* "
                   f"({', '.join(foreign)}); only sentence_transformers' own are accepted")


def install(folder: Path, target: Path) -> None:
    """Move `folder` to `target`, a new revision's folder, by one rename. Nothing is ever
    replaced: a generation pinned to an older revision keeps loading its own files."""
    target.parent.mkdir(mode=0o755, exist_ok=True)
    try:
        # rename() onto an existing empty folder would succeed: refuse any existing target.
        if target.exists():
            raise FileExistsError(target)
        folder.rename(target)
    except OSError:  # another upload or change of source took this revision's number
        raise Conflict("another upload or change of source of this model finished at the "
                       "same moment; upload again if yours should win") from None
    for path in [target.parent, target, *target.rglob("*")]:
        # Readable by a Docker replica's uid (10001): it enters the bind mount directly, while
        # on the host the store's 0700 root keeps every other user out (schemas/file_modes).
        with contextlib.suppress(OSError):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)


def scratch_dir(store: Path, upload_id: str) -> Path:
    """The upload's own scratch folder, in an owner-only store (review L4)."""
    private_dir(store)
    folder = private_dir(store / INCOMING) / upload_id
    folder.mkdir(mode=0o700)
    return folder


def limits_of(settings: Settings, allow_pickled: bool) -> Limits:
    return Limits(max_upload_bytes=settings.max_upload_mb * 2**20,
                  max_files=settings.upload_max_files,
                  max_unpacked_bytes=settings.upload_max_unpacked_mb * 2**20,
                  allow_pickled=allow_pickled)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def folder_digest(folder: Path) -> str:
    """The content digest of a revision's files: sha256 over each file's relative path and
    bytes, in path order (the same files give the same digest wherever they lie)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                digest.update(chunk)
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()


async def upload(pool: asyncpg.Pool, settings: Settings, model: Model,
                 chunks: AsyncIterator[bytes], allow_pickled: bool,
                 declared_size: int | None = None) -> Model:
    """Receive, unpack, check and install the model's weights. The model is held meanwhile
    (train_status in_progress under a renewed lease, review M5) and released after: complete,
    or back to what it was if the archive is refused or anything fails."""
    store = private_dir(settings.model_store_dir.resolve())
    allowance = await quotas.store_allowance(pool, settings, model)
    limits = dataclasses.replace(
        limits_of(settings, allow_pickled),
        quota_left_bytes=allowance.left_bytes if allowance is not None else None,
        room=lambda more: store_space.check_room(settings, store, more))
    # Checked before a byte streams in: the archive's size, the owner's store quota, the disk.
    if declared_size is not None and declared_size > limits.max_upload_bytes:
        raise _bad(f"archive is larger than {limits.max_upload_bytes // 2**20} MB "
                   "(GREENROOM_MAX_UPLOAD_MB)", TooLarge)
    if allowance is not None and (declared_size or 1) > allowance.left_bytes:
        raise allowance.refuse(declared_size or 1)
    store_space.check_room(settings, store, declared_size or 0)
    if await revisions.count(pool, model.id) >= revisions.MAX_REVISIONS:
        raise Conflict(f"model {model.identifier} has {revisions.MAX_REVISIONS:,} revisions, "
                       "the most one model may have; register a new model")
    await upload_lease.sweep_incoming(pool, store, settings.upload_lease_s)
    upload_id = uuid4().hex
    before = await upload_lease.claim(pool, settings, model, upload_id)
    lease = upload_lease.UploadLease(pool, model.id, upload_id, settings.upload_lease_s)
    number = await revisions.next_number(pool, model.id)
    target = store / str(model.id) / str(number)
    try:
        async with upload_lease.renewed(lease):
            scratch = scratch_dir(store, upload_id)
            try:
                archive = await receive(chunks, scratch, limits)
                folder = await asyncio.to_thread(unpack, archive, scratch / "unpacked", limits)
                weights = check_model(folder, limits)
                size = await asyncio.to_thread(_folder_bytes, folder)
                digest = await asyncio.to_thread(folder_digest, folder)
                await lease.check()
                await asyncio.to_thread(install, folder, target)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            # Weights make a hashing model a real one; a chosen torch or onnx backend stays.
            backend = model.source.get("backend")
            source = {**model.source, "location": str(target),
                      "backend": (backend if backend in ("sentence-transformers", "onnx")
                                  else "auto")}
            try:
                await revisions.insert(pool, model.id, number, "upload", source, digest, size)
            except UniqueViolation:
                shutil.rmtree(target, ignore_errors=True)
                raise Conflict("another upload or change of source of this model finished "
                               "at the same moment; upload again if yours should win") from None
    except BaseException:
        await asyncio.shield(models.end_upload(pool, model.id, upload_id, before))
        raise
    await models.update_source(pool, model.id, source)
    await models.merge_metadata(pool, model.id, {"uploaded_weights": weights})
    await models.end_upload(pool, model.id, upload_id, "complete", size)
    found = await models.get(pool, model.id)
    assert found is not None
    return found
