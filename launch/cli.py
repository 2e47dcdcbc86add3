"""`greenroom` command line: api, gateway, worker, migrate, up, users, image on this machine,
and the API commands (login, models, deploy, delete, status, tasks, logs, scale, keys) over HTTP."""

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from pydantic import ValidationError

from launch.cli_api import add_commands, extend_register
from launch.cli_errors import user_errors
from launch.stack_state import settings_with_stack
from schemas.logs import configure_logging
from schemas.models import ModelSource
from schemas.settings import Settings


def _exec_module(module: str, *args: str) -> None:
    """Run another package's entry point in this process (service never imports worker)."""
    os.execv(sys.executable, [sys.executable, "-m", module, *args])


def cmd_api(settings: Settings, _: argparse.Namespace) -> None:
    from service.server import serve

    serve(settings)


def cmd_gateway(settings: Settings, args: argparse.Namespace) -> None:
    from gateway.server import serve

    if args.engine:
        settings = settings.model_copy(update={"gateway_engine": args.engine})
    serve(settings, processes=args.processes)


def cmd_migrate(settings: Settings, _: argparse.Namespace) -> None:
    from db.migrate import apply_migrations

    applied = asyncio.run(apply_migrations(settings.require_database_url()))
    print("applied: " + (", ".join(applied) if applied else "nothing, schema is current"))


async def _register(settings: Settings, args: argparse.Namespace) -> str:
    from db.pool import create_pool
    from service.domain.registration import register

    source = ModelSource(backend=args.backend, location=args.location, dimension=args.dimension)
    pool = await create_pool(settings.require_database_url(), max_size=2)
    try:
        model = await register(pool, args.owner, args.name, source, args.access_level)
    finally:
        await pool.close()
    return str(model.id)


def cmd_models_register(settings: Settings, args: argparse.Namespace) -> None:
    if args.owner is None:  # the user's form: over HTTP, as whoever is logged in
        from launch.cli_api import models_register, run

        args.model_name = args.model_name or args.name
        if not args.model_name:
            sys.exit("greenroom models register: give the model a name")
        args.api = models_register
        run(settings, args)
    if not args.name:
        sys.exit("greenroom models register: --owner needs --name")
    print(asyncio.run(_register(settings, args)))


async def _create_user(settings: Settings, args: argparse.Namespace, password: str) -> str:
    from db.pool import create_pool
    from schemas.auth import UserCreate
    from schemas.errors import Conflict
    from service.domain.accounts import create_user

    body = UserCreate(username=args.username, password=password, email=args.email,
                      is_admin=args.admin)
    pool = await create_pool(settings.require_database_url(), max_size=2)
    try:
        user = await create_user(pool, body)
    except Conflict as exc:
        sys.exit(f"greenroom users create: {exc.message}")
    finally:
        await pool.close()
    return f"{user.id} {user.username}{' (admin)' if user.is_admin else ''}"


def cmd_users_create(settings: Settings, args: argparse.Namespace) -> None:
    """Create a user; the password comes from GREENROOM_NEW_PASSWORD or a prompt."""
    import getpass

    from pydantic import ValidationError

    password = os.environ.get("GREENROOM_NEW_PASSWORD") or getpass.getpass("password: ")
    try:
        print(asyncio.run(_create_user(settings, args, password)))
    except ValidationError as exc:
        sys.exit(f"greenroom users create: {exc.errors()[0]['msg']}")


def cmd_up(settings: Settings, args: argparse.Namespace) -> None:
    from launch.up import run_up

    sys.exit(run_up(settings, once=args.once, runtime=args.runtime))


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and `--help` still shows the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="greenroom", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("api", help="run the API (control plane)").set_defaults(fn=cmd_api)
    gateway = sub.add_parser("gateway", help="run the gateway (data plane); any number of copies")
    gateway.add_argument("--processes", type=int,
                         help="processes sharing the port (default GREENROOM_GATEWAY_PROCESSES)")
    gateway.add_argument("--engine", choices=["python", "haproxy"],
                         help="python: the gateway processes alone; haproxy: HAProxy serves "
                              "public models straight to replicas, the Python gateways the "
                              "rest (default GREENROOM_GATEWAY_ENGINE)")
    gateway.set_defaults(fn=cmd_gateway)
    sub.add_parser("worker", help="run a worker").set_defaults(
        fn=lambda s, a: _exec_module("worker"))
    sub.add_parser("migrate", help="apply database migrations").set_defaults(fn=cmd_migrate)
    up = sub.add_parser("up", help="everything on this machine, with the bundled model deployed")
    up.add_argument("--once", action="store_true", help="print the example, then shut down")
    up.add_argument("--runtime", choices=["process", "docker", "swarm"],
                    help="where replicas run: processes on this machine, containers on the "
                         "Docker Engine, or services on its swarm; the model-server image is "
                         "built offline on first use (default GREENROOM_RUNTIME, else process)")
    up.set_defaults(fn=cmd_up)
    models = sub.add_parser("models", help="model registry").add_subparsers(
        dest="action", required=True)
    reg = models.add_parser("register", help="register a model")
    reg.add_argument("--owner", help="straight into the database for this owner; prints the id")
    reg.add_argument("--name")
    reg.add_argument("--backend", default="auto",
                     choices=["auto", "sentence-transformers", "onnx", "hashing"])
    reg.add_argument("--location", help="model directory or package:NAME")
    reg.add_argument("--dimension", type=int)
    reg.add_argument("--access-level", default="private",
                     choices=["private", "protected", "public"])
    reg.set_defaults(fn=cmd_models_register)
    extend_register(reg)
    users = sub.add_parser("users", help="accounts").add_subparsers(dest="action",
                                                                    required=True)
    create = users.add_parser("create", help="create a user (the first admin: --admin)")
    create.add_argument("username")
    create.add_argument("--email")
    create.add_argument("--admin", action="store_true", help="make the user an administrator")
    create.set_defaults(fn=cmd_users_create)
    image = sub.add_parser("image", help="model-server images").add_subparsers(
        dest="action", required=True)
    build = image.add_parser("build", help="build the model-server image offline")
    build.add_argument("rest", nargs=argparse.REMAINDER)
    build.set_defaults(fn=lambda s, a: _exec_module("launch.image", "build", *a.rest))
    add_commands(sub, models)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        settings = Settings()
    except ValidationError as exc:
        sys.exit(f"greenroom: invalid setting: {exc.errors()[0]['loc'][0]}: "
                 f"{exc.errors()[0]['msg']}")
    if args.command != "up":  # up starts the stack; everything else finds it
        settings = settings_with_stack(settings)
    configure_logging(settings.log_level, settings.log_json)
    if getattr(args, "api", None) is not None:
        from launch.cli_api import run

        run(settings, args)
    with user_errors(args.command, settings):
        args.fn(settings, args)


if __name__ == "__main__":
    main()
