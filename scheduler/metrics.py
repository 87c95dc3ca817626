"""``GET /metrics``: the scheduler's figures for the technicians' Prometheus / Grafana.

Two kinds of figures, one registry per scheduler (never prometheus_client's global one, so several
schedulers in one process — tests, the demo — do not clash):

* **live** counters of this process: commands published, messages received from gateways, the
  broker link, and the IOC API's requests (scheduler/ioc/metrics.py); they restart at 0 with the
  process, as Prometheus counters do;
* **state** read from the database at each scrape (one read-only transaction on the database
  thread): gateways by status, speakers online, commands by kind and state, refusals by reason,
  per-speaker broadcast outcomes. These are gauges: they are what the database says now, and they
  survive restarts.

Refusal reasons come from gateways; a reason that is not a short ``snake_case`` word is counted as
``other``, and at most :data:`MAX_REASONS` distinct reasons are kept, so a misbehaving gateway
cannot blow up the number of series.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from scheduler.db import AsyncStore, Store
from scheduler.fleet.models import FleetAlarm, FleetNotification
from scheduler.models import Broadcast, Gateway, GatewayDelivery, Speaker, SpeakerDelivery

MAX_REASONS = 20
_REASON_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def reason_label(error: str | None) -> str:
    """``"bad_signature: …"`` → ``bad_signature``; anything unusual → ``other``."""
    head = (error or "").split(":", 1)[0].strip().lower()
    return head if _REASON_RE.fullmatch(head) else "other"


@dataclass
class DbSnapshot:
    gateways: dict[str, int] = field(default_factory=dict)
    speakers: dict[str, int] = field(default_factory=dict)
    commands: dict[tuple[str, str], int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    speaker_deliveries: dict[str, int] = field(default_factory=dict)
    broadcasts: dict[str, int] = field(default_factory=dict)
    alarms: dict[tuple[str, str], int] = field(default_factory=dict)
    notifications: dict[tuple[str, str], int] = field(default_factory=dict)


def db_snapshot(store: Store) -> DbSnapshot:
    """Counts by state, in one read transaction (runs on the database thread)."""
    snap = DbSnapshot()
    with store.session() as s:
        for status, n in s.execute(select(Gateway.status, func.count()).group_by(Gateway.status)):
            key = status if status in ("online", "offline") else "unknown"
            snap.gateways[key] = snap.gateways.get(key, 0) + int(n)
        for online, n in s.execute(select(Speaker.online, func.count()).group_by(Speaker.online)):
            key = "unknown" if online is None else ("online" if online else "offline")
            snap.speakers[key] = snap.speakers.get(key, 0) + int(n)
        for kind, state, n in s.execute(
            select(GatewayDelivery.kind, GatewayDelivery.state, func.count()).group_by(
                GatewayDelivery.kind, GatewayDelivery.state
            )
        ):
            snap.commands[(str(kind), str(state))] = int(n)
        reasons: Counter[str] = Counter()
        for error, n in s.execute(
            select(GatewayDelivery.error, func.count())
            .where(GatewayDelivery.state == "refused")
            .group_by(GatewayDelivery.error)
        ):
            reasons[reason_label(error)] += int(n)
        kept = dict(reasons.most_common(MAX_REASONS))
        other = sum(reasons.values()) - sum(kept.values())
        if other:
            kept["other"] = kept.get("other", 0) + other
        snap.refused = kept
        for state, n in s.execute(select(SpeakerDelivery.state, func.count()).group_by(SpeakerDelivery.state)):
            snap.speaker_deliveries[str(state)] = int(n)
        for cancelled, n in s.execute(select(Broadcast.cancelled, func.count()).group_by(Broadcast.cancelled)):
            snap.broadcasts["cancelled" if cancelled else "active"] = int(n)
        for severity, acked, n in s.execute(
            select(FleetAlarm.severity, FleetAlarm.acknowledged, func.count())
            .where(FleetAlarm.status == "active")
            .group_by(FleetAlarm.severity, FleetAlarm.acknowledged)
        ):
            snap.alarms[(str(severity), "true" if acked else "false")] = int(n)
        for channel, state, n in s.execute(
            select(FleetNotification.channel, FleetNotification.state, func.count()).group_by(
                FleetNotification.channel, FleetNotification.state
            )
        ):
            snap.notifications[(str(channel), str(state))] = int(n)
    return snap


class SchedulerCollector(Collector):
    """Yields the last database snapshot and the dispatcher's live counters at each scrape."""

    def __init__(self, live: Callable[[], dict[str, float]]):
        self.live = live
        self.snapshot = DbSnapshot()

    def collect(self) -> Iterator[Metric]:
        live = self.live()
        g = GaugeMetricFamily("loaxa_scheduler_mqtt_connected", "1 while the scheduler is connected to the broker")
        g.add_metric([], live.get("mqtt_connected", 0.0))
        yield g
        c = CounterMetricFamily("loaxa_scheduler_commands_published", "signed commands published (resends included)")
        c.add_metric([], live.get("commands_published", 0.0))
        yield c
        c = CounterMetricFamily("loaxa_scheduler_messages_received", "status, ack, event and state messages received")
        c.add_metric([], live.get("messages_received", 0.0))
        yield c

        snap = self.snapshot
        g = GaugeMetricFamily("loaxa_gateways", "gateways known to the scheduler, by last status", labels=["status"])
        for k in ("online", "offline", "unknown"):
            g.add_metric([k], snap.gateways.get(k, 0))
        yield g
        g = GaugeMetricFamily("loaxa_speakers", "speakers known to the scheduler, by last state", labels=["state"])
        for k in ("online", "offline", "unknown"):
            g.add_metric([k], snap.speakers.get(k, 0))
        yield g
        g = GaugeMetricFamily(
            "loaxa_commands", "commands to gateways in the database, by kind and delivery state",
            labels=["kind", "state"],
        )
        for (kind, state), n in sorted(snap.commands.items()):
            g.add_metric([kind, state], n)
        yield g
        g = GaugeMetricFamily("loaxa_commands_refused", "commands refused by a gateway, by reason", labels=["reason"])
        for reason, n in sorted(snap.refused.items()):
            g.add_metric([reason], n)
        yield g
        g = GaugeMetricFamily(
            "loaxa_speaker_deliveries", "broadcast outcome per speaker (pending … finished/failed)", labels=["state"]
        )
        for state, n in sorted(snap.speaker_deliveries.items()):
            g.add_metric([state], n)
        yield g
        g = GaugeMetricFamily("loaxa_broadcasts", "broadcasts in the database", labels=["state"])
        for state, n in sorted(snap.broadcasts.items()):
            g.add_metric([state], n)
        yield g
        g = GaugeMetricFamily("loaxa_alarms_active", "active alarms, by severity and whether acknowledged",
                              labels=["severity", "acknowledged"])
        for sev in ("critical", "major", "minor", "warning"):
            for acked in ("false", "true"):
                g.add_metric([sev, acked], snap.alarms.get((sev, acked), 0))
        yield g
        g = GaugeMetricFamily("loaxa_notifications", "alarm notifications in the outbox, by channel and state",
                              labels=["channel", "state"])
        for (channel, state), n in sorted(snap.notifications.items()):
            g.add_metric([channel, state], n)
        yield g


class SchedulerMetrics:
    """The registry behind ``/metrics``; ``router(dep)`` serves it behind the given caller check."""

    def __init__(self, store: AsyncStore, live: Callable[[], dict[str, float]]):
        self.store = store
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = SchedulerCollector(live)
        self.registry.register(self.collector)
        self._lock = asyncio.Lock()

    async def render(self) -> bytes:
        async with self._lock:  # one snapshot + exposition at a time
            self.collector.snapshot = await self.store.call(db_snapshot, self.store.store)
            return generate_latest(self.registry)

    def router(self, principal_dep: Callable[..., Any]) -> APIRouter:
        router = APIRouter(tags=["metrics"])
        metrics = self

        @router.get(
            "/metrics", summary="Prometheus metrics (text exposition format)", dependencies=[Depends(principal_dep)]
        )
        async def get_metrics() -> Response:
            return Response(await metrics.render(), media_type=CONTENT_TYPE_LATEST)

        return router
