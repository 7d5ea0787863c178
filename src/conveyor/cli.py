"""The `conveyor` command."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rich.console import Console

console = Console(stderr=True, highlight=False)


def _database():
    from conveyor.adapters.database import Database, create_engine_for
    from conveyor.local.database import resolve_database_url

    return Database(create_engine_for(resolve_database_url(), pool_size=1))


def cmd_dev(args: argparse.Namespace) -> int:
    from conveyor.local.stack import DevSettings, run

    run(
        DevSettings(api_port=args.port, sqs_port=args.sqs_port, pollers=args.pollers),
        say=lambda text: console.print(text, soft_wrap=True),
    )
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from conveyor.local.database import resolve_database_url
    from conveyor.migrations_runner import upgrade

    upgrade(resolve_database_url())
    console.print("migrations applied")
    return 0


def cmd_clients_create(args: argparse.Namespace) -> int:
    from conveyor.services.admin import create_client

    client = create_client(_database(), args.name)
    console.print(f"created client {client.name} ({client.id}). Its API key is shown once:")
    print(client.api_key)
    return 0


def cmd_catalog_import(args: argparse.Namespace) -> int:
    from conveyor.services.admin import import_catalog, read_catalog_csv

    count = import_catalog(_database(), read_catalog_csv(Path(args.path)))
    console.print(f"imported {count} catalog item(s) from {args.path}")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from conveyor.loadgen import LoadSettings, run_load

    summary = run_load(
        LoadSettings(
            orders=args.orders,
            concurrency=args.concurrency,
            duplicates=args.duplicates,
            api_url=args.api_url,
            api_key=args.api_key,
            settle_timeout=args.timeout,
        ),
        console,
    )
    print(json.dumps(summary, separators=(",", ":")))
    return 0 if summary["settled"] == summary["placed"] else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conveyor", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="run the whole system locally (no Docker, no AWS account)")
    dev.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    dev.add_argument("--sqs-port", type=int, default=9324, help="local SQS port (default 9324)")
    dev.add_argument("--pollers", type=int, default=4, help="concurrent worker pollers (default 4)")
    dev.set_defaults(func=cmd_dev)

    commands.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)

    clients = commands.add_parser("clients", help="manage API clients").add_subparsers(dest="action", required=True)
    create = clients.add_parser("create", help="create a client and print its API key once, on the last line")
    create.add_argument("name")
    create.set_defaults(func=cmd_clients_create)

    catalog = commands.add_parser("catalog", help="manage the catalog").add_subparsers(dest="action", required=True)
    importer = catalog.add_parser("import", help="insert or update items from a CSV: sku,name,currency,unit_price,stock")
    importer.add_argument("path")
    importer.set_defaults(func=cmd_catalog_import)

    load = commands.add_parser("load", help="place orders through the HTTP API and report settle latency")
    load.add_argument("--orders", type=int, default=1000)
    load.add_argument("--concurrency", type=int, default=16)
    load.add_argument("--duplicates", type=float, default=0.1, help="share of orders POSTed twice (0..1)")
    load.add_argument("--api-url", help="default: the running `conveyor dev` in this folder")
    load.add_argument("--api-key", help="default: the local stack's demo key")
    load.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for orders to settle")
    load.set_defaults(func=cmd_load)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence: say what to do next
        from conveyor.loadgen import LoadError
        from conveyor.services.admin import AdminError

        if isinstance(exc, (AdminError, LoadError, FileNotFoundError)):
            console.print(f"[red]error:[/red] {exc}")
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
