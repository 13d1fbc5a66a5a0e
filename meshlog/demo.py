"""``meshlog demo``: the README's first command.

Brings up a local broker (or uses $MESHLOG_KAFKA_BOOTSTRAP), ensures the
topics, appends a small sample mesh through the same producer the registrar
uses, and shows exactly what was appended. The broker is left running for
exploration (``meshlog kafka down`` stops it) unless ``--stop`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from datetime import datetime, timezone

from rich.console import Console
from rich.table import Table

from events.admin import BrokerUnavailable, ensure_topics
from events.envelope import new_event
from events.producer import EventProducer
from events.types import (
    DestinationPolicyUpserted,
    InstanceHealthChanged,
    InstanceRegistered,
    Payload,
    RouteRuleUpserted,
    SidecarPorts,
    Subset,
    HttpRoute,
    WeightedDestination,
)


def sample_mesh() -> list[Payload]:
    """A bookinfo-like mesh: productpage calls reviews (v1, v2) and details; reviews calls ratings."""

    def instance(service, n, port, deps=(), version="v1", zone="zone-a"):
        base = 16000 + 10 * len(instances)
        return InstanceRegistered(
            service=service,
            instance_id=f"{service}-{n}",
            address="127.0.0.1",
            port=port,
            labels={"version": version, "zone": zone},
            node_id=f"{service}-{n}",
            sidecar=SidecarPorts(inbound_port=base, outbound_port=base + 1),
            depends_on=tuple(deps),
        )

    instances: list[Payload] = []
    instances.append(instance("productpage", 1, 9080, deps=("reviews", "details")))
    instances.append(instance("details", 1, 9081))
    instances.append(instance("reviews", 1, 9082, deps=("ratings",), version="v1"))
    instances.append(instance("reviews", 2, 9083, deps=("ratings",), version="v2", zone="zone-b"))
    instances.append(instance("ratings", 1, 9084))
    return [
        *instances,
        InstanceHealthChanged(service="ratings", instance_id="ratings-1", status="healthy", reason="probe ok", observer="demo"),
        DestinationPolicyUpserted(
            service="reviews",
            revision=1,
            subsets=(Subset(name="v1", labels={"version": "v1"}), Subset(name="v2", labels={"version": "v2"})),
            lb_policy="least_request",
        ),
        RouteRuleUpserted(
            host="reviews",
            revision=1,
            routes=(
                HttpRoute(
                    destinations=(WeightedDestination(subset="v1", weight=90), WeightedDestination(subset="v2", weight=10))
                ),
            ),
        ),
    ]


async def _publish(bootstrap: str) -> list:
    report = await ensure_topics(bootstrap)
    payloads = sample_mesh()
    async with EventProducer(bootstrap) as producer:
        appended = [await producer.append(new_event(p, producer="meshlog-demo")) for p in payloads]
    return [report, list(zip(payloads, appended))]


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    demo = subparsers.add_parser("demo", help="run the demo mesh (README command 1)")
    demo.add_argument("--stop", action="store_true", help="stop the local broker when the demo ends")
    demo.set_defaults(func=run)
    return demo


def run(args: argparse.Namespace) -> int:
    console = Console()
    from meshlog import kafka_local

    bootstrap = os.environ.get("MESHLOG_KAFKA_BOOTSTRAP")
    started_here = False
    if not bootstrap:
        console.print("[bold]1.[/] starting a local Kafka broker (first run fetches its jars from Maven Central)…")
        status = kafka_local.up()
        bootstrap = status.state.bootstrap
        started_here = not status.already_running
    console.print(f"   Kafka at [cyan]{bootstrap}[/]")
    try:
        console.print("[bold]2.[/] ensuring topics and appending the sample mesh…")
        report, appended = asyncio.run(_publish(bootstrap))
    except BrokerUnavailable as exc:
        console.print(f"[red]demo: {exc}[/]")
        return 3
    if report.created:
        console.print(f"   created {len(report.created)} topics: {', '.join(report.created)}")
    for mismatch in report.mismatches:
        console.print(f"   [yellow]topic mismatch left unchanged: {mismatch}[/]")

    table = Table(title="appended to the log")
    for column in ("event", "key", "topic", "partition", "offset", "log time (UTC)"):
        table.add_column(column)
    for payload, record in appended:
        when = datetime.fromtimestamp(record.timestamp_ms / 1000, timezone.utc).strftime("%H:%M:%S.%f")[:-3]
        table.add_row(payload.TYPE, record.key, record.topic, str(record.partition), str(record.offset), when)
    console.print(table)

    if args.stop and started_here:
        kafka_local.down()
        console.print("broker stopped")
    elif not os.environ.get("MESHLOG_KAFKA_BOOTSTRAP"):
        console.print(
            "The broker keeps running: try [bold]registrar --help[/], then stop it with [bold]meshlog kafka down[/]."
        )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run(argparse.Namespace(stop=False)))
