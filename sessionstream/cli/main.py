"""The ``sessionstream`` command line.

Every command takes ``--db PATH`` (SQLite) or ``--database-url URL``
(PostgreSQL), also read from ``SESSIONSTREAM_DB`` / ``SESSIONSTREAM_DATABASE_URL``.
A configuration error is one line on stderr and exit status 2; every setting is
in docs/configuration.md.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import signal
import sys
from collections.abc import Sequence
from typing import Any

from sessionstream.cli import audit, config, maintenance, operations, replay, transfer
from sessionstream.cli.commands import (
    COMMANDS,
    command,
    described,
    exit_codes,
    open_store,
)
from sessionstream.core.errors import ConfigError, SessionStreamError
from sessionstream.core.logs import configure_logging
from sessionstream.core.settings import Settings


def settings_from(args: argparse.Namespace) -> Settings:
    """The environment, with the flags this command was given on top."""
    flags = (*config.COMMON_FLAGS, *config.SERVE_FLAGS)
    return Settings.from_env(**{name: getattr(args, name, None) for name in flags})


@command("serve")
def serve(args: argparse.Namespace, settings: Settings) -> int:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is optional
        pass
    from sessionstream.server.app import create_app

    app = create_app(settings)
    asyncio.run(_serve(app, settings))
    return 0


async def _serve(app: Any, settings: Settings) -> None:
    """Start (open the store, which takes its lock; recover), bind, and only then say
    where it listens; run until SIGINT or SIGTERM. A failure to start is a ConfigError:
    one line, exit 2, no traceback."""
    from aiohttp import web

    runner = web.AppRunner(app, keepalive_timeout=settings.keepalive_s, shutdown_timeout=10)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    from sessionstream.server.app import settle_gc

    try:
        await runner.setup()
        settle_gc()
        site = web.TCPSite(runner, settings.host, settings.port)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(bind_problem(settings, exc)) from None
        where = (settings.database_url and "PostgreSQL") or settings.db_path
        print(
            f"sessionstream on http://{settings.host}:{settings.port} "
            f"(store: {where}, engine: {settings.engine})",
            flush=True,
        )
        await stop.wait()
    finally:
        await runner.cleanup()


def bind_problem(settings: Settings, exc: OSError) -> str:
    """The one line for a port that cannot be listened on, naming what to change."""
    if exc.errno == errno.EADDRINUSE:
        return (
            f"port {settings.port} is in use on {settings.host}; "
            "pass --port or set SESSIONSTREAM_PORT"
        )
    if exc.errno == errno.EACCES:
        return (
            f"not allowed to listen on port {settings.port}; "
            "pass --port or set SESSIONSTREAM_PORT (above 1023)"
        )
    reason = exc.strerror or str(exc)
    return (
        f"cannot listen on {settings.host}:{settings.port}: {reason}; "
        "check --host (SESSIONSTREAM_HOST) and --port (SESSIONSTREAM_PORT)"
    )


@command("users")
def users(args: argparse.Namespace, settings: Settings) -> int:
    """Tokens are printed alone on the last line of stdout so scripts can take them."""
    from sessionstream.core.errors import NotFound
    from sessionstream.services.accounts import create_user, issue_token, revoke_token

    async def run() -> int:
        async with open_store(settings, create=args.action == "create") as store:
            try:
                if args.action == "create":
                    user_id, token = await create_user(store, args.name)
                    print(f"created user {args.name} ({user_id}); this token is shown once:")
                    print(token)
                elif args.action == "list":
                    print(f"{'id':36}  {'tokens':>6}  {'created':24}  name")
                    for doc in await store.list_docs("user"):
                        user = doc.body
                        print(
                            f"{user['id']:36}  {user['tokens']:>6}  "
                            f"{user['created_at']:24}  {user['name']}"
                        )
                elif args.action == "token":
                    token = await issue_token(store, args.user_id)
                    print(f"new token for user {args.user_id}; it is shown once:")
                    print(token)
                else:
                    token = args.token or sys.stdin.readline()
                    user_id = await revoke_token(store, token)
                    print(f"revoked a token of user {user_id}")
            except NotFound as exc:
                print(f"error: {exc.message}", file=sys.stderr)
                return 1
        return 0

    return asyncio.run(run())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sessionstream",
        description="An event-sourced session store with realtime streaming. "
        "`sessionstream COMMAND --help` says what a command does and exits with.",
        epilog=exit_codes(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    config.add_flags(common, config.COMMON_FLAGS)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "serve",
        parents=[common],
        **described(
            "run the HTTP and websocket server",
            "0 after a clean shutdown (Ctrl-C or SIGTERM), 2 when it cannot start: a bad "
            "setting, a port in use, a database another server holds",
        ),
    )
    config.add_flags(p, config.SERVE_FLAGS)

    p = sub.add_parser(
        "users",
        parents=[common],
        **described(
            "create users, list them, issue and revoke their API tokens",
            "0 when done, 1 for an unknown user or token, 2 on bad usage",
        ),
    )
    users_sub = p.add_subparsers(dest="action", required=True)
    create = users_sub.add_parser(
        "create",
        parents=[common],
        **described("create a user and print its first token (alone on the last line)", "0 or 2"),
    )
    create.add_argument("name")
    users_sub.add_parser(
        "list",
        parents=[common],
        **described("every user: id, active tokens, name", "0, 2 when there is no database"),
    )
    token = users_sub.add_parser(
        "token",
        parents=[common],
        **described(
            "issue another token for a user (alone on the last line)",
            "0, 1 for an unknown user, 2 on bad usage or when there is no database",
        ),
    )
    token.add_argument("user_id")
    revoke = users_sub.add_parser(
        "revoke",
        parents=[common],
        **described(
            "revoke a token (servers stop accepting it within SESSIONSTREAM_TOKEN_CACHE_S)",
            "0, 1 for a token that is not known, 2 on bad usage or when there is no database",
        ),
    )
    revoke.add_argument("token", nargs="?", help="the token; read from stdin when omitted")

    # maintenance and operations commands are declared beside the code they drive
    maintenance.add_commands(sub, common)
    replay.add_commands(sub, common)
    transfer.add_commands(sub, common)
    audit.add_commands(sub, common)
    operations.add_commands(sub, common)
    config.add_commands(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from(args)
        configure_logging(settings.log_level)  # every command logs as `serve` does: JSON lines
        return COMMANDS[args.command](args, settings)
    except SessionStreamError as exc:
        # a setting, a port, a database that cannot be used: the message names it and
        # says what is wrong; a traceback adds nothing
        print(f"error: {exc.message}", file=sys.stderr)
        return config.CONFIG_ERROR_EXIT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
