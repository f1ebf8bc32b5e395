"""The `usage-stream` console script (CONTRACT §0)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import logging
import sys
from pathlib import Path

from processor.logs import configure_logging
from processor.settings import Settings, SettingsError, load_settings

log = logging.getLogger("usage_stream")


def _settings_or_exit() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        print(f"usage-stream: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _use_uvloop() -> None:
    """uvloop when installed (it is a dependency on Linux): the ingest path spends much of
    its time in socket reads and callbacks, which uvloop runs faster."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _tune_gc() -> None:
    """Fewer cyclic-GC passes: every batch allocates tens of thousands of short-lived
    objects, and with the default thresholds the collector ran every 700 of them. What
    was loaded at start-up is frozen out of the collector's way."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)


def cmd_worker(settings: Settings) -> int:
    from processor.domain.alert_rules import AlertRulesError, load_rules

    try:
        load_rules(settings.alert_rules_file)
    except AlertRulesError as exc:
        print(f"usage-stream: USAGE_ALERT_RULES_FILE: {exc}", file=sys.stderr)
        return 2
    import faust

    from processor.app import create_app
    from processor.topics import ensure_topics

    configure_logging(settings.log_level, settings.log_format, secrets=settings.secret_values())
    try:
        asyncio.run(asyncio.wait_for(ensure_topics(settings), timeout=60))
    except Exception as exc:
        from processor.connections import explain_kafka_failure

        # Wrong credentials or an untrusted certificate stay wrong: exit at once with the
        # reason and the settings to fix, rather than retry (this topic check is the first
        # Kafka contact, so nothing else has started yet).
        reason = asyncio.run(explain_kafka_failure(settings, exc))
        print(f"usage-stream: cannot start: {reason}", file=sys.stderr)
        return 1
    _use_uvloop()
    asyncio.set_event_loop(asyncio.new_event_loop())
    app = create_app(settings)
    _tune_gc()
    worker = faust.Worker(
        app,
        loglevel=settings.log_level,
        override_logging=False,
        # Faust's start-up spinner and "OK" go to stdout as bare text; with JSON logs
        # every line must be a record (without the spinner Faust logs "Ready" instead)
        quiet=settings.log_format == "json",
    )
    if settings.log_format == "json":
        worker.spinner = None
    worker.execute_from_commandline()
    return 0


def cmd_stack(settings: Settings, action: str) -> int:
    from processor.stack import LocalStack, StackError, StackSettings

    stack = LocalStack(StackSettings(), partitions=settings.topic_partitions)
    try:
        if action == "up":
            info = stack.up()
            print(f"kafka: {info.kafka_bootstrap}\nredis: {info.redis_url}")
            print("\n".join(stack.env_lines()))
        elif action == "down":
            stack.down()
        elif action == "status":
            print(stack.status())
        elif action == "env":
            print("\n".join(stack.env_lines()))
        elif action == "install":
            stack.install()
    except StackError as exc:
        print(f"usage-stream stack {action}: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_schemas(action: str, directory: Path) -> int:
    from schemas.export import check_json_schemas, export_json_schemas

    if action == "export":
        for path in export_json_schemas(directory):
            print(path)
        return 0
    stale = check_json_schemas(directory)
    if stale:
        print("out of date: " + ", ".join(stale) + " (run: usage-stream schemas export)")
        return 1
    print("schemas are up to date")
    return 0


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date YYYY-MM-DD") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="usage-stream", description="Exact, live rollups of LLM agent usage."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("worker", help="run one worker: every stream agent plus the HTTP API")
    stack = sub.add_parser("stack", help="the local real stack (Kafka KRaft + Redis)")
    stack.add_argument("action", choices=["up", "down", "status", "env", "install"])
    schemas = sub.add_parser("schemas", help="JSON Schema files of the wire messages")
    schemas.add_argument("action", choices=["export", "check"])
    schemas.add_argument("--dir", type=Path, default=Path("schemas/json"))
    demo = sub.add_parser("demo", help="stack + worker + simulated agents, live dashboard")
    demo.add_argument("--seconds", type=float, default=0, help="stop after this long (0: never)")
    demo.add_argument(
        "--rate", type=_positive, default=200, help="entries/s the simulated fleet publishes"
    )
    demo.add_argument(
        "--users", type=_positive, default=20, help="users of the fleet's ordinary runs"
    )
    demo.add_argument(
        "--headless",
        action="store_true",
        help="one summary line a second instead of the dashboard (the default off a terminal)",
    )
    bench = sub.add_parser("bench", help="raw aiokafka ceiling vs the full pipeline")
    bench.add_argument("--entries", type=int, default=200_000)
    bench.add_argument("--rate", type=int, default=2000, help="offered load for the latency run")
    bench.add_argument("--latency-seconds", type=float, default=10.0)
    bench.add_argument(
        "--reads",
        action="store_true",
        help="time the user, billing and invoice reads instead (1M entries of one user)",
    )
    prices = sub.add_parser("prices", help="the price catalog: show a price, check a file")
    prices_sub = prices.add_subparsers(dest="action", required=True)
    show = prices_sub.add_parser("show", help="the price in effect for a model, and its source")
    show.add_argument("model")
    show.add_argument("--provider", default=None)
    show.add_argument("--at", type=_date, default=None, help="YYYY-MM-DD (default: today, UTC)")
    check = prices_sub.add_parser("check", help="validate a prices file as start-up would")
    check.add_argument("file", type=Path)
    alerts = sub.add_parser("alerts", help="alert rules: check a rules file")
    alerts_sub = alerts.add_subparsers(dest="action", required=True)
    alerts_check = alerts_sub.add_parser("check", help="validate an alert rules file")
    alerts_check.add_argument("file", type=Path)
    invoices = sub.add_parser("invoices", help="invoices of a billing period")
    invoices_sub = invoices.add_subparsers(dest="action", required=True)
    generate = invoices_sub.add_parser(
        "generate", help="create a period's missing invoices and publish them (idempotent)"
    )
    generate.add_argument("period", help="YYYY-MM")
    args = parser.parse_args(argv)

    if args.command == "schemas":
        return cmd_schemas(args.action, args.dir)
    if args.command == "prices" and args.action == "check":
        from processor.prices_cli import check_prices_file

        return check_prices_file(args.file)
    if args.command == "alerts":
        from processor.alerts_cli import check_rules_file

        return check_rules_file(args.file)
    settings = _settings_or_exit()
    if args.command == "worker":
        return cmd_worker(settings)
    if args.command == "stack":
        return cmd_stack(settings, args.action)
    if args.command == "demo":
        from processor.demo import run_demo

        return run_demo(
            settings,
            seconds=args.seconds,
            rate=args.rate,
            users=args.users,
            headless=args.headless,
        )
    if args.command == "prices":
        from processor.prices_cli import show_price

        return show_price(
            args.model, provider=args.provider, at=args.at, prices_file=settings.prices_file
        )
    if args.command == "invoices":
        from processor.invoices_cli import generate_invoices

        return generate_invoices(settings, args.period)
    if args.command == "bench" and args.reads:
        from processor.bench_reads import run_read_bench

        return run_read_bench(settings)
    if args.command == "bench":
        from processor.bench import run_bench

        return run_bench(
            settings,
            entries=args.entries,
            rate=args.rate,
            latency_seconds=args.latency_seconds,
        )
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
