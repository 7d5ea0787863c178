"""The `conveyor` command."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rich.console import Console

from conveyor.bootstrap import ConfigurationError

console = Console(stderr=True, highlight=False)


def _database(connections: int = 1):
    from conveyor_tools.local.database import open_command_database

    return open_command_database(pool_size=connections)


def cmd_dev(args: argparse.Namespace) -> int:
    from conveyor_tools.local.stack import DevSettings, run

    run(
        DevSettings(api_port=args.port, sqs_port=args.sqs_port, pollers=args.pollers,
                    data_api=args.data_api, data_api_port=args.data_api_port, console_port=args.console_port),
        say=lambda text: console.print(text, soft_wrap=True),
    )
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from conveyor_tools.local.database import command_database

    choice = command_database()
    if choice.kind == "data_api":  # a deploy machine that reaches Aurora only through the Data API
        import os

        from conveyor.dataapi.client import DATABASE_VARIABLE, RESOURCE_ARN_VARIABLE, SECRET_ARN_VARIABLE
        from conveyor.dataapi.migrations import upgrade_through_data_api

        missing = [name for name in (RESOURCE_ARN_VARIABLE, SECRET_ARN_VARIABLE, DATABASE_VARIABLE)
                   if not os.environ.get(name)]
        if missing:
            raise ConfigurationError(f"{', '.join(missing)} not set: the Data API needs the cluster ARN, the"
                                     " secret ARN and the database name")
        upgrade_through_data_api(os.environ[RESOURCE_ARN_VARIABLE], os.environ[SECRET_ARN_VARIABLE],
                                 os.environ[DATABASE_VARIABLE])
    else:
        from conveyor.migrations_runner import upgrade

        assert choice.url is not None
        upgrade(choice.url)
    console.print(f"migrations applied through {choice.describe()}")
    return 0


def _cli_actor():
    """Whoever runs the CLI holds the database's credentials: an admin, named in the audit log."""
    import getpass

    from conveyor.services.access import Actor, Role

    return Actor(name=f"cli:{getpass.getuser()}", role=Role.ADMIN)


def cmd_clients_create(args: argparse.Namespace) -> int:
    from conveyor.adapters.api_keys import api_key_registry
    from conveyor.services import clients

    client = clients.create(_database(), _cli_actor(), args.name, registry=api_key_registry())
    console.print(f"created client {client.name} ({client.id}). Its API key is shown once:")
    print(client.api_key)
    return 0


def cmd_clients_revoke(args: argparse.Namespace) -> int:
    from conveyor.adapters.api_keys import api_key_registry
    from conveyor.services import clients

    name = clients.revoke(_database(), _cli_actor(), args.client, args.reason, registry=api_key_registry())
    console.print(f"revoked client {name}: its API key no longer works")
    return 0


def _read_password() -> str:
    import getpass

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise ValueError("the passwords differ; run the command again")
        return password
    return sys.stdin.readline().rstrip("\r\n")


def cmd_console_users_create(args: argparse.Namespace) -> int:
    from conveyor.services.access import Role
    from conveyor.services.users import create_user

    user = create_user(_database(), _cli_actor(), args.name, Role.parse(args.role), _read_password())
    console.print(f"created console user {user['name']} ({user['role']})")
    return 0


def _dead_letter_queue():
    """The DLQ from ORDERS_QUEUE_URL and ORDERS_DLQ_URL, or else the running `conveyor dev` stack's."""
    import os

    from conveyor.adapters.dead_letter_queue import SqsDeadLetterQueue
    from conveyor_tools.local.database import state_dir
    from conveyor_tools.local.sqs import sqs_client

    queue_url, dlq_url, endpoint = (os.environ.get("ORDERS_QUEUE_URL"), os.environ.get("ORDERS_DLQ_URL"),
                                    os.environ.get("AWS_ENDPOINT_URL_SQS"))
    if not (queue_url and dlq_url):
        stack_file = state_dir() / "stack.json"
        if not stack_file.exists():
            raise ValueError("set ORDERS_QUEUE_URL and ORDERS_DLQ_URL, or start `conveyor dev` in this folder")
        stack = json.loads(stack_file.read_text())
        queue_url, dlq_url, endpoint = stack["queue_url"], stack["dlq_url"], stack["sqs_endpoint"]
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    return SqsDeadLetterQueue(sqs_client(endpoint, region), queue_url, dlq_url)


def cmd_dlq_list(args: argparse.Namespace) -> int:
    from conveyor.services.dead_letters import list_dead_letters

    messages = list_dead_letters(_dead_letter_queue(), _database(), _cli_actor(), limit=args.limit)
    for message in messages:
        print(json.dumps({**message, "sent_at": message["sent_at"] and message["sent_at"].isoformat(),
                          "body": message["body"]}, default=str))
    console.print(f"{len(messages)} dead-lettered message(s)")
    return 0


def _chosen(args: argparse.Namespace) -> set[str] | None:
    if args.all == bool(args.message_ids):
        raise ValueError("name the message ids, or pass --all (not both)")
    return None if args.all else set(args.message_ids)


def cmd_dlq_redrive(args: argparse.Namespace) -> int:
    from conveyor.services.dead_letters import redrive

    moved = redrive(_dead_letter_queue(), _database(), _cli_actor(), _chosen(args), args.reason)
    console.print(f"redrove {len(moved)} message(s) to the orders queue")
    return 0


def cmd_dlq_delete(args: argparse.Namespace) -> int:
    from conveyor.services.dead_letters import delete

    ids = _chosen(args)
    if not args.yes:
        if not sys.stdin.isatty():
            raise ValueError("deleting needs --yes when there is no terminal to confirm on")
        what = "ALL dead letters" if ids is None else f"{len(ids)} message(s)"
        if input(f"delete {what} for good? type yes: ").strip() != "yes":
            console.print("nothing deleted")
            return 1
    deleted = delete(_dead_letter_queue(), _database(), _cli_actor(), ids, args.reason)
    console.print(f"deleted {len(deleted)} message(s)")
    return 0


def cmd_catalog_import(args: argparse.Namespace) -> int:
    from conveyor.services.admin import import_catalog, read_catalog_csv

    count = import_catalog(_database(), read_catalog_csv(Path(args.path)))
    console.print(f"imported {count} catalog item(s) from {args.path}")
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from conveyor_tools.loadgen import LoadSettings, run_load

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


def cmd_chaos(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from conveyor_tools.chaos import ChaosRun, ChaosSettings
    from conveyor_tools.local.database import command_database, scratch_database

    settings = ChaosSettings(orders=args.orders, workers=args.workers, fault_rate=args.fault_rate,
                             seed=args.seed, naive=args.naive, data_api=args.data_api)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    server_url = command_database(direct_only=True).url
    assert server_url is not None
    with scratch_database(server_url, "chaos") as url, Progress(*columns, console=console) as progress:
        task = progress.add_task("messages settled", total=None)
        summary = ChaosRun(settings, url, lambda done, total: progress.update(task, completed=done, total=total)).run()
    for name, holds in summary["invariants"].items():
        console.print(f"{'[green]holds[/green]' if holds else '[red]BROKEN[/red]'}  {name}")
    print(json.dumps(summary, separators=(",", ":")))
    return 0 if all(summary["invariants"].values()) else 1


def _column_map(pairs: list[str] | None) -> dict[str, str] | None:
    from conveyor.reconciliation.service import ReconciliationError

    if not pairs:
        return None
    mapping = {}
    for pair in pairs:
        field, equals, column = pair.partition("=")
        if not equals or not field.strip() or not column.strip():
            raise ReconciliationError(f"--map {pair!r}: write FIELD=COLUMN, e.g. --map reference='Order Ref'")
        mapping[field.strip()] = column
    return mapping


def _estimated_rows(path: Path) -> int:
    """About how many rows a report holds, from the length of the lines in its first MiB (for a progress bar)."""
    with path.open("rb") as report:
        sample = report.read(1 << 20)
    lines = sample.count(b"\n")
    if lines < 2:
        return 1
    return max(1, round(path.stat().st_size * lines / len(sample)) - 1)  # the header is not a row


def cmd_reconcile(args: argparse.Namespace) -> int:
    from datetime import datetime

    import logging
    import os

    from aws_lambda_powertools import Logger
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from conveyor.adapters.database import Database
    from conveyor.errors import PermanentError
    from conveyor.reconciliation.engine import CATEGORIES
    from conveyor.reconciliation.formats import check_timezone
    from conveyor.reconciliation.service import (
        ReconciliationError, ReconciliationService, RunClaims, direct_connection,
    )
    from conveyor.reconciliation.sources import open_source

    try:
        cutoff = datetime.fromisoformat(args.cutoff) if args.cutoff else None
    except ValueError:
        raise ReconciliationError(f"--cutoff {args.cutoff!r} is not an ISO 8601 time such as 2026-10-31T23:59:59+00:00") from None
    check_timezone(args.timezone)
    database = _database(connections=3)  # the run's, its claim's, and one for progress
    # Its JSON logs go to stderr: stdout carries only the final JSON line.
    logger = Logger(service="conveyor-reconciliation", level=os.environ.get("LOG_LEVEL", "INFO"),
                    logger_handler=logging.StreamHandler(sys.stderr))
    # Over a direct connection the run loads with COPY; through the Data API, in one Data API transaction.
    direct = isinstance(database, Database)
    service = ReconciliationService(
        database, (lambda: direct_connection(database.engine)) if isinstance(database, Database) else None, logger)
    # Claimed like a console's runs, so that no console's recovery takes this one for an orphan.
    # (Through the Data API a claim cannot outlive a call: the run is submitted unclaimed, as the console does.)
    claims = RunClaims(service.connect) if direct else None
    report = open_source(args.source)
    try:
        try:
            if claims is not None:
                run, claimed = service.submit_claimed(report, args.format, cutoff, claims, _column_map(args.map),
                                                      args.timezone)
            else:
                run = service.submit(report, args.format, cutoff, _column_map(args.map), args.timezone)
                claimed = run["needs_execution"]
        except PermanentError as exc:
            if exc.sqlstate == "42P01":  # undefined_table
                raise ReconciliationError("this database has no reconciliation tables yet: run `conveyor migrate`"
                                          " first") from None
            raise
        if not claimed and run["status"] != "COMPLETED":
            # The spinner shows only on a terminal; the log line tells scripts (and tests) it is waiting.
            logger.info("waiting for the process that executes the run", extra={"run_id": run["id"]})
            with console.status(f"run {run['id']} is being executed by another process; waiting for it"):
                while run["status"] not in ("COMPLETED", "FAILED") and not run["orphaned"]:
                    time.sleep(1)
                    run = service.get(run["id"])
            if run["orphaned"]:
                raise ReconciliationError(f"the process executing run {run['id']} stopped; run this command again")
        elif run["needs_execution"]:
            expected_rows = _estimated_rows(report.path)
            with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                          TextColumn("{task.completed:,.0f} rows"), TimeElapsedColumn(),
                          console=console, transient=True) as progress:
                task = progress.add_task(f"loading {args.source} ({run['format']})", total=expected_rows)

                def show(step) -> None:
                    if step.stage == "LOADING":
                        progress.update(task, completed=step.rows_loaded, total=max(expected_rows, step.rows_loaded))
                    else:  # loaded; what is left is a few set-based statements
                        doing = "saving" if step.rows_classified else "classifying"
                        progress.update(task, description=f"{doing} {args.source}",
                                        completed=step.rows_loaded, total=step.rows_loaded)

                run = service.execute(run["id"], report, on_progress=show)
        else:
            console.print(f"this report was already reconciled by run {run['id']}; showing its result")
    finally:
        if claims is not None:
            claims.close()
        report.discard()
    if run["status"] != "COMPLETED":
        console.print(f"[red]error:[/red] reconciliation {run['id']} {run['status'].lower()}: {run['error']}")
        return 1
    console.print(f"run {run['id']}: {run['rows_loaded']:,} rows, cutoff {run['cutoff']}", soft_wrap=True)
    _warn_about(run)
    summary = {category: run["counts"][category] for category in CATEGORIES}
    print(json.dumps({**summary, "totals": run["totals"], "run_id": run["id"], "format": run["format"],
                      "rows": run["rows_loaded"], "unmapped_types": run["unmapped_types"] or {},
                      "inconsistent_rows": run["inconsistent_rows"]}, separators=(",", ":")))
    return 0


def _warn_about(run: dict) -> None:
    """What reading the report noticed without refusing it."""
    if run["unmapped_types"]:
        types = ", ".join(f"{name} ({count:,} rows)" for name, count in run["unmapped_types"].items())
        console.print(f"[yellow]warning:[/yellow] row types nobody mapped, counted as other: {types}", soft_wrap=True)
    if run["inconsistent_rows"]:
        inconsistent = run["inconsistent_rows"]
        lines = ", ".join(map(str, inconsistent["lines"])) + (", …" if inconsistent["count"] > len(inconsistent["lines"])
                                                               else "")
        console.print(f"[yellow]warning:[/yellow] {inconsistent['count']:,} row(s) where {inconsistent['message']};"
                      f" lines {lines}", soft_wrap=True)


def cmd_dataapi(args: argparse.Namespace) -> int:
    import threading

    from sqlalchemy.engine import make_url

    from conveyor_tools.dataapi.server import LocalDataApi
    from conveyor_tools.local.database import command_database

    database_url = args.database_url or command_database(direct_only=True).url
    assert database_url is not None
    endpoint = LocalDataApi(
        database_url, port=args.port, latency_seconds=args.latency_ms / 1000,
        cluster_arns=frozenset(args.cluster_arn) if args.cluster_arn else None,
        secret_arns=frozenset(args.secret_arn) if args.secret_arn else None,
    )
    if args.pause_seconds:
        endpoint.pause(resume_seconds=args.pause_seconds)
    with endpoint:
        shown = make_url(database_url).render_as_string(hide_password=True)
        console.print(f"RDS Data API on {endpoint.endpoint_url}, in front of {shown}", soft_wrap=True)
        console.print(f"point boto3 at it:  export AWS_ENDPOINT_URL_RDS_DATA={endpoint.endpoint_url}", soft_wrap=True)
        if args.pause_seconds:
            console.print(f"paused: the first call wakes it, and it resumes {args.pause_seconds:g}s later")
        console.print("Ctrl-C to stop")
        threading.Event().wait()
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from conveyor_tools.deploy.commands import deploy

    return deploy(args.stage, dry_run=args.dry_run, out=Path(args.out) if args.out else None,
                  image_tag=args.image_tag, console=console)


def cmd_destroy(args: argparse.Namespace) -> int:
    from conveyor_tools.deploy.commands import destroy

    return destroy(args.stage, force=args.force, console=console)


def cmd_package(args: argparse.Namespace) -> int:
    from conveyor_tools.deploy.run import package_offline
    from conveyor_tools.packaging import MAX_PACKAGE_BYTES

    packages = package_offline(args.stage, Path(args.out),
                               lambda text: console.print(text, soft_wrap=True, markup=False))
    sizes = {app: (path / "deployment.zip").stat().st_size for app, path in packages.items()}
    print(json.dumps({"packages": {app: str(path) for app, path in packages.items()}, "zip_bytes": sizes,
                      "within_budget": all(size <= MAX_PACKAGE_BYTES for size in sizes.values())},
                     separators=(",", ":")))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="conveyor", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="run the whole system locally (no Docker, no AWS account)")
    dev.add_argument("--port", type=int, default=8000, help="API port (default 8000)")
    dev.add_argument("--sqs-port", type=int, default=9324, help="local SQS port (default 9324)")
    dev.add_argument("--pollers", type=int, default=4, help="concurrent worker pollers (default 4)")
    dev.add_argument("--data-api-port", type=int, default=9325, help="local RDS Data API port (default 9325)")
    dev.add_argument("--console-port", type=int, default=8080, help="console and reconciliation port (default 8080)")
    dev.add_argument("--direct-database", dest="data_api", action="store_false",
                     help="connect the API and worker to PostgreSQL directly instead of through the Data API")
    dev.set_defaults(func=cmd_dev)

    commands.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)

    clients = commands.add_parser("clients", help="manage API clients").add_subparsers(dest="action", required=True)
    create = clients.add_parser("create", help="create a client and print its API key once, on the last line")
    create.add_argument("name")
    create.set_defaults(func=cmd_clients_create)
    revoke = clients.add_parser("revoke", help="stop a client's API key working (and remove it from API Gateway)")
    revoke.add_argument("client", help="the client's name or id")
    revoke.add_argument("--reason", help="recorded in the admin audit log")
    revoke.set_defaults(func=cmd_clients_revoke)

    console_cmd = commands.add_parser("console", help="manage the admin console").add_subparsers(
        dest="area", required=True)
    console_users = console_cmd.add_parser("users", help="console users").add_subparsers(dest="action", required=True)
    user_create = console_users.add_parser(
        "create", help="create a console user; the password is read from a prompt, or from stdin without a terminal")
    user_create.add_argument("name")
    user_create.add_argument("--role", choices=["viewer", "operator", "admin"], required=True)
    user_create.set_defaults(func=cmd_console_users_create)

    dlq = commands.add_parser("dlq", help="dead-lettered order messages").add_subparsers(dest="action", required=True)
    dlq_list = dlq.add_parser("list", help="one JSON line per message: body, receive count, recorded reason")
    dlq_list.add_argument("--limit", type=int, default=100)
    dlq_list.set_defaults(func=cmd_dlq_list)
    for name, func, text in (("redrive", cmd_dlq_redrive, "send messages back to the orders queue"),
                             ("delete", cmd_dlq_delete, "delete messages for good (asks to confirm)")):
        action = dlq.add_parser(name, help=text)
        action.add_argument("message_ids", nargs="*", metavar="MESSAGE_ID")
        action.add_argument("--all", action="store_true", help="every message in the DLQ")
        action.add_argument("--reason", required=name == "delete", help="recorded in the admin audit log")
        if name == "delete":
            action.add_argument("--yes", action="store_true", help="do not ask to confirm")
        action.set_defaults(func=func)

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

    reconcile = commands.add_parser(
        "reconcile", help="reconcile orders against a settlement report; ends with one JSON line of counts and totals")
    reconcile.add_argument("source", help="a report CSV: a local path or s3://bucket/key")
    reconcile.add_argument("--format", choices=["stripe", "adyen", "generic"],
                           help="default: detected from the header")
    reconcile.add_argument("--cutoff", help="ISO 8601 time with offset; confirmed orders created later are not"
                           " expected in the report (default: the report's latest row time; required when its"
                           " rows have none)")
    reconcile.add_argument("--timezone", metavar="ZONE",
                           help="IANA time zone of the report's local times, e.g. Europe/Berlin: the zone a Stripe"
                           " report with `created` (not created_utc) was run in, or an Adyen account's zone when its"
                           " TimeZone column is ambiguous (IST, CST) or empty")
    reconcile.add_argument("--map", action="append", metavar="FIELD=COLUMN",
                           help="generic format: read FIELD from the column COLUMN, e.g. --map reference='Order Ref'"
                           " (repeatable; fields: reference, currency, amount, type, alt_reference, fee, net,"
                           " created_at, transaction_id)")
    reconcile.set_defaults(func=cmd_reconcile)

    chaos = commands.add_parser("chaos", help="run the worker under redelivery, reordering, crashes and faults")
    chaos.add_argument("--orders", type=int, default=18_500, help="orders to place (default 18500: over 20,000 messages)")
    chaos.add_argument("--workers", type=int, default=4, help="worker processes (default 4)")
    chaos.add_argument("--fault-rate", type=float, default=0.05, help="share of batches given a fault (default 0.05)")
    chaos.add_argument("--seed", type=int, default=1)
    chaos.add_argument("--naive", action="store_true", help="swap in a non-idempotent store; the run must fail")
    chaos.add_argument("--data-api", action="store_true", help="workers go through a local Data API endpoint")
    chaos.set_defaults(func=cmd_chaos)

    dataapi = commands.add_parser("dataapi", help="serve the RDS Data API on 127.0.0.1 in front of PostgreSQL")
    dataapi.add_argument("--port", type=int, default=9325, help="port (default 9325; 0 picks a free one)")
    dataapi.add_argument("--database-url", help="default: DATABASE_URL, or the local stack's embedded PostgreSQL")
    dataapi.add_argument("--pause-seconds", type=float, default=0.0,
                         help="start as an auto-paused cluster that resumes this long after the first call")
    dataapi.add_argument("--latency-ms", type=float, default=0.0, help="simulated network latency added to every call")
    dataapi.add_argument("--cluster-arn", action="append", help="accept only this cluster ARN (repeatable)")
    dataapi.add_argument("--secret-arn", action="append", help="accept only this secret ARN (repeatable)")
    dataapi.set_defaults(func=cmd_dataapi)

    deploy = commands.add_parser("deploy", help="deploy a stage to AWS: stacks, Lambda packages, image, migrations")
    deploy.add_argument("--stage", required=True, help="dev, prod, or any name (infra/stages/NAME.json, else dev's)")
    deploy.add_argument("--dry-run", action="store_true", help="write everything to --out; no AWS call, no credentials")
    deploy.add_argument("--out", help="where to write templates, parameters, policies and packages"
                        " (default .conveyor/deploy/STAGE)")
    deploy.add_argument("--image-tag", help="use this image already in the stage's ECR repository instead of building")
    deploy.set_defaults(func=cmd_deploy)

    destroy = commands.add_parser("destroy", help="delete a stage's stacks (prod needs --force; its database is snapshotted)")
    destroy.add_argument("--stage", required=True)
    destroy.add_argument("--force", action="store_true", help="required to destroy prod")
    destroy.set_defaults(func=cmd_destroy)

    package = commands.add_parser("package", help="build the API's and the worker's Lambda packages and templates"
                                  " (chalice package): OUT/api and OUT/worker, each deployment.zip + sam.json")
    package.add_argument("--out", required=True, help="folder to write them into")
    package.add_argument("--stage", default="dev", help="the stage whose policies and settings they carry"
                         " (infra/stages/STAGE.json, else dev's; default dev)")
    package.set_defaults(func=cmd_package)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence: say what to do next
        from conveyor.reconciliation.formats import SettlementReportError
        from conveyor.reconciliation.service import ReconciliationError
        from conveyor.reconciliation.sources import SourceRefused, SourceUnreadable
        from conveyor.adapters.dead_letter_queue import QueueError
        from conveyor.services.access import Forbidden
        from conveyor.services.admin import AdminError
        from conveyor_tools.deploy.plan import DeployError
        from conveyor_tools.loadgen import LoadError
        from conveyor_tools.packaging import PackagingError

        # ValueError covers the services' own input errors (users, dead letters, stock).
        if isinstance(exc, (AdminError, DeployError, LoadError, FileNotFoundError, PackagingError, SettlementReportError,
                            ReconciliationError, SourceRefused, SourceUnreadable, ValueError, QueueError, Forbidden,
                            ConfigurationError)):
            console.print(f"[red]error:[/red] {exc}")
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
