"""The telemetry service: spool + MQTT ingest + polled drivers + InfluxDB delivery + health.

``attach(ctx)`` plugs it into the gateway (``gateway.app.SERVICE_MODULES``); ``python -m
gateway.telemetry --config gateway.yaml`` runs it alone (tests, benchmark, a Pi without speakers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from devices.base import SensorDriver
from devices.config import MqttSensorConfig
from gateway.config import GatewayConfig, InfluxSection
from gateway.context import GatewayContext
from loaxa.clock import now_ms
from protocol.models import AlarmEvent, Reading
from protocol.topics import device_topic, filter_devices

from .ingest import InMsg, TelemetryIngest
from .lineproto import format_fields, line, tag_set
from .spool import Row, Spool
from .validate import DAY_MS, Limits, Rejection, check_payload, check_polled
from .writer import RejectedData, TooLarge, TransientError, Writer, make_writer

log = logging.getLogger(__name__)

SPOOL_FILE = "telemetry-spool.sqlite3"
#: exists once the telemetry client has had a session on the LAN broker (see ``_session_lost``)
SESSION_MARKER = "telemetry-mqtt-session"
_MEASUREMENT_RE = re.compile(r"^[a-z_][a-z0-9_]{0,63}$")

PublishEvent = Callable[[AlarmEvent], Awaitable[None]]

#: While the gateway's own clock is not synchronised (a Pi without RTC boots with the time it saved
#: before the power cut, possibly days behind until NTP answers over 4G), readings up to this far
#: "in the future" are accepted rather than lost: they are most likely right and the Pi wrong.
UNSYNCED_MAX_FUTURE_MS = 30 * DAY_MS
CLOCK_CHECK_S = 10.0


def kernel_clock_synced() -> bool | None:
    """True/False from the kernel (adjtimex, as ``timedatectl`` shows it); None when unknown."""
    try:
        from devices.sensors.pihealth import clock_state
    except ImportError:
        return None
    synced = clock_state().get("clock_synced")
    return bool(synced) if synced is not None else None


class TelemetryService:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        data_dir: Path | None = None,
        publish_event: PublishEvent | None = None,
        drivers: Sequence[SensorDriver] = (),
        writer: Writer | None = None,
        health_source: Callable[[], Mapping[str, Any]] | None = None,
        clock_synced: Callable[[], bool | None] = kernel_clock_synced,
        observers: list[Callable[[Sequence[tuple[int, str, str, str]]], None]] | None = None,
    ) -> None:
        self.config = config
        self.gateway_id = config.gateway.id
        self.commune = config.gateway.commune
        self.influx: InfluxSection | None = config.influx
        data_dir = Path(data_dir or config.gateway.data_dir)
        self.spool = Spool(
            data_dir / SPOOL_FILE, max_bytes=config.spool.max_bytes, retain_days=config.spool.retain_days
        )
        max_age = (config.spool.retain_days or 60) * DAY_MS
        self._strict_limits = Limits(max_age_ms=max_age)
        self._lenient_limits = Limits(max_age_ms=max_age, max_future_ms=UNSYNCED_MAX_FUTURE_MS)
        self.clock_synced = clock_synced
        self.limits = self._strict_limits
        self._check_clock()
        self.publish_event = publish_event
        self.drivers = list(drivers)
        self.writer = writer if writer is not None else (make_writer(self.influx) if self.influx else None)
        self.health_source = health_source
        self.mqtt_devices: dict[str, str] = {
            d.id: d.measurement for d in config.devices if isinstance(d, MqttSensorConfig)
        }
        self.ingest = TelemetryIngest(
            config.local_broker,
            topic_filter=filter_devices(self.gateway_id, "telemetry"),
            client_id=f"loaxa-gw-{self.gateway_id}-telemetry"[:128],
            process=self._process,
            spool=self.spool,
            receipt_topic=lambda dev: device_topic(self.gateway_id, dev, "receipt"),
            take_refused=self._take_refused,
            on_session_lost=self._session_lost,
            session_marker=data_dir / SESSION_MARKER,
        )
        #: refused readings (by device) of the batch being processed, for its receipts
        self._refused_ts: dict[str, list[int]] = {}
        self._background: set[asyncio.Task[None]] = set()
        # counters
        self.rejected: Counter[str] = Counter()
        self.rejected_by_device: Counter[str] = Counter()
        self.accepted = 0
        self.written = 0
        self.write_batches = 0
        self.last_write_ms: int | None = None
        self.last_error: str | None = None
        self.last_error_ms: int | None = None
        self.driver_crashes: Counter[str] = Counter()
        self._alarm_pending: Counter[str] = Counter()
        self._alarm_examples: dict[str, str] = {}
        #: oversize messages seen since the last alarm (device, size): each gets an alarm of its own kind
        self._oversize: list[dict[str, Any]] = []
        self.quarantined = 0
        self._prefixes: dict[tuple[str, str], str] = {}
        self.last_driver_error: str | None = None
        self.started = asyncio.Event()
        #: called with every batch of accepted rows before the spool commit (local warning rules);
        #: on the event loop, so they must be quick and must not block
        self.observers: list[Callable[[Sequence[tuple[int, str, str, str]]], None]] = (
            observers if observers is not None else [])

    # ------------------------------------------------------------------ accepting

    def _check_clock(self) -> None:
        """Strict future limit (1 day) unless the clock is known to be unsynchronised."""
        try:
            synced = self.clock_synced()
        except Exception:  # a broken probe must not stop ingest
            synced = None
        lenient = synced is False
        if lenient and self.limits is not self._lenient_limits:
            log.warning(
                "gateway clock not synchronised: accepting readings up to %d days ahead of it",
                UNSYNCED_MAX_FUTURE_MS // DAY_MS,
            )
        elif not lenient and self.limits is self._lenient_limits:
            log.warning("gateway clock synchronised: readings more than 1 day ahead are refused again")
        self.limits = self._lenient_limits if lenient else self._strict_limits

    async def _clock_forever(self) -> None:
        while True:
            await asyncio.sleep(CLOCK_CHECK_S)
            self._check_clock()

    def _reject(self, rejections: Sequence[Rejection], device: str | None, *, size: int | None = None) -> None:
        for rej in rejections:
            if rej.reason == "too_large":
                self._oversize.append({"device": device or "?", "bytes": size, "message": rej.message[:200]})
            self.rejected[rej.reason] += rej.count
            self._alarm_pending[rej.reason] += rej.count
            self._alarm_examples.setdefault(rej.reason, f"{device or '?'}: {rej.message}"[:300])
            if device:
                self.rejected_by_device[device] += rej.count

    def _process(self, msgs: list[InMsg]) -> list[tuple[int, str, str, str]]:
        """Check each message on its own: whatever one message holds (a poison that crashes the
        parser included) costs that message only, as a named refusal; it is acknowledged with the
        rest of the batch, so the broker never redelivers it."""
        now = now_ms()
        rows: list[tuple[int, str, str, str]] = []
        for m in msgs:
            try:
                self._process_one(m, now, rows)
            except Exception as exc:
                log.exception("checking a telemetry message on %s failed; refusing it", m.topic[:200])
                self._reject([Rejection("internal", f"{type(exc).__name__}: {str(exc)[:200]}")], None)
        self.accepted += len(rows)
        self._observe(rows)
        return rows

    def _observe(self, rows: Sequence[tuple[int, str, str, str]]) -> None:
        for observer in self.observers:
            try:
                observer(rows)
            except Exception:  # a rule that fails must never cost a reading
                log.exception("telemetry observer %r failed", observer)

    def _process_one(self, m: InMsg, now: int, rows: list[tuple[int, str, str, str]]) -> None:
        parts = m.topic.split("/")
        dev = parts[4] if len(parts) == 6 else None
        if dev is None or parts[5] != "telemetry":
            self._reject([Rejection("bad_topic", f"unexpected topic {m.topic[:200]!r}")], None)
            return
        meas = self.mqtt_devices.get(dev)
        if meas is None:
            self._reject(
                [Rejection("unknown_device", f"device {dev[:64]!r} is not in the gateway configuration")],
                None,
            )
            return
        checked = check_payload(m.payload, now, self.limits)
        if checked.rejected:
            self._reject(checked.rejected, dev, size=len(m.payload))
            if checked.refused_ts:
                self._refused_ts.setdefault(dev, []).extend(checked.refused_ts)
        for ts, fields in checked.accepted:
            rows.append((ts, dev, meas, fields))

    def _take_refused(self) -> dict[str, list[int]]:
        refused, self._refused_ts = self._refused_ts, {}
        return refused

    def _session_lost(self) -> None:
        """The LAN broker came back without the telemetry client's session (restarted without saving
        it): what it held for the gateway is gone. Devices with receipts send theirs again; readings
        of plain MQTT sensors sent while the gateway was away are lost, and the technician must know."""
        event = AlarmEvent(
            code="telemetry_session_lost",
            severity="critical",
            at=now_ms(),
            message=f"the LAN broker {self.config.local_broker.url} had no session for the gateway's telemetry "
            "client: readings that sensors without receipts sent while the gateway was not connected may be "
            "lost (was the broker restarted without persistence, or its database deleted?)",
            details={"broker": self.config.local_broker.url, "client_id": self.ingest.client_id},
        )
        task = asyncio.get_running_loop().create_task(self._publish_alarm(event))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def accept_polled(self, device_id: str, measurement: str, readings: Sequence[Reading]) -> None:
        """The :data:`devices.base.ReadingSink`: returns once the valid readings are committed."""
        if not _MEASUREMENT_RE.fullmatch(measurement):
            self._reject(
                [
                    Rejection(
                        "bad_field_name",
                        f"measurement {measurement[:80]!r} is not a safe name",
                        len(readings),
                    )
                ],
                device_id,
            )
            return
        checked = check_polled(readings, now_ms(), self.limits)
        if checked.rejected:
            self._reject(checked.rejected, device_id)
        rows = [(ts, device_id, measurement, fields) for ts, fields in checked.accepted]
        self.accepted += len(rows)
        self._observe(rows)
        await self.spool.put(rows)

    # ------------------------------------------------------------------ delivery

    def _prefix(self, measurement: str, device: str) -> str:
        """``measurement,commune=…,device=…,gateway=… `` (cached: few distinct pairs per gateway)."""
        key = (measurement, device)
        p = self._prefixes.get(key)
        if p is None:
            tags = tag_set({"gateway": self.gateway_id, "device": device, "commune": self.commune})
            p = line(measurement, tags, "", 0)[:-2]  # "measurement,tags " without the fields and time
            if len(self._prefixes) < 10_000:
                self._prefixes[key] = p
        return p

    def _lines(self, rows: Sequence[Row]) -> list[str]:
        prefixes = self._prefixes
        out = []
        for r in rows:
            p = prefixes.get((r.measurement, r.device)) or self._prefix(r.measurement, r.device)
            out.append(f"{p}{r.fields} {r.ts}")
        return out

    async def _write_split(self, writer: Writer, rows: Sequence[Row]) -> list[tuple[Row, str]]:
        """Write ``rows``; if the server refuses the data, halve until the refused lines are found
        alone. Returns those lines with the server's message (the rest were written)."""
        try:
            await writer.write(self._lines(rows))
            return []
        except (RejectedData, TooLarge) as exc:
            if len(rows) == 1:
                log.warning("InfluxDB refused a reading of %s (%s): %s", rows[0].device, rows[0].measurement, exc)
                return [(rows[0], str(exc))]
            mid = len(rows) // 2
            return await self._write_split(writer, rows[:mid]) + await self._write_split(writer, rows[mid:])

    async def _wait_for_batch(self, batch_size: int, flush_s: float) -> None:
        spool = self.spool
        while spool.pending == 0:
            spool.data_event.clear()
            await spool.data_event.wait()
        deadline = time.monotonic() + flush_s
        while spool.pending < batch_size:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            spool.data_event.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(spool.data_event.wait(), left)

    async def deliver_forever(self) -> None:
        """Write the spool to InfluxDB, oldest first, one batch at a time. While a batch is on its way
        the next one is already read from the spool (a backlog drains about twice as fast)."""
        assert self.influx is not None and self.writer is not None
        cfg, writer, spool = self.influx, self.writer, self.spool
        ahead: asyncio.Future[list[Row]] | None = None
        while True:
            if ahead is None:
                await self._wait_for_batch(cfg.batch_size, cfg.flush_interval_s)
            delay = cfg.retry_initial_s
            while True:
                if ahead is not None:
                    rows, ahead = await ahead, None
                else:  # (re-)read: after a failed write, eviction may have removed some rows
                    rows = await spool.next_batch(0, cfg.batch_size)
                if not rows:
                    break
                if spool.pending > len(rows):
                    ahead = asyncio.ensure_future(spool.next_batch(rows[-1].id, cfg.batch_size))
                try:
                    bad = await self._write_split(writer, rows)
                except TransientError as exc:
                    if ahead is not None:
                        ahead.cancel()
                        ahead = None
                    self.last_error, self.last_error_ms = str(exc), now_ms()
                    sleep = delay / 2 + random.uniform(0, delay / 2)  # exponential backoff, "equal jitter"
                    log.warning("InfluxDB write of %d readings failed (%s); retrying in %.1f s", len(rows), exc, sleep)
                    await asyncio.sleep(sleep)
                    delay = min(delay * 2, cfg.retry_max_s)
                    continue
                await spool.mark_delivered(rows[-1].id, bad)
                if self.last_error is not None:
                    log.info("InfluxDB writes succeed again (last error: %s)", self.last_error)
                    self.last_error = None
                if bad:
                    await self._alarm_quarantine(bad)
                self.written += len(rows) - len(bad)
                self.write_batches += 1
                self.last_write_ms = now_ms()
                break

    # ------------------------------------------------------------------ drivers, alarms, health

    async def _run_driver(self, driver: SensorDriver) -> None:
        backoff = 1.0
        while True:
            try:
                await driver.run(self.accept_polled)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.driver_crashes[driver.device_id] += 1
                log.exception("sensor driver %s crashed; restarting in %.0f s", driver.device_id, backoff)
                self.last_driver_error = f"{driver.device_id}: {exc}"
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 60)

    async def _publish_alarm(self, event: AlarmEvent) -> None:
        log.warning("%s", event.message)
        if self.publish_event is not None:
            try:
                await self.publish_event(event)
            except Exception:
                log.exception("could not publish the %s alarm", event.code)

    async def _alarm_quarantine(self, bad: Sequence[tuple[Row, str]]) -> None:
        """Every batch in which InfluxDB refused readings raises an alarm (they are kept in the spool's
        quarantine, not lost, but nobody would know without it)."""
        self.quarantined += len(bad)
        self.rejected["quarantined"] += len(bad)
        for row, _msg in bad:
            if row.device:
                self.rejected_by_device[row.device] += 1
        examples = [{"device": r.device, "measurement": r.measurement, "ts": r.ts, "error": m[:200]}
                    for r, m in bad[:5]]
        await self._publish_alarm(AlarmEvent(
            code="telemetry_quarantined",
            severity="warning",
            at=now_ms(),
            message=f"InfluxDB refused {len(bad)} reading(s) the gateway had accepted; they are kept in the "
            f"spool's quarantine (loaxa gateway export shows them). First: {examples[0]['device']}: "
            f"{examples[0]['error']}",
            details={"count": len(bad), "examples": examples},
        ))

    async def _alarm_oversize(self) -> None:
        """Oversize messages the gateway can see (over the 256 KiB payload limit but under the broker's
        max_packet_size, or over the readings-per-message cap) get an alarm of their own: the device is
        misconfigured and every such message loses all its readings. Bigger ones the broker drops
        before the gateway sees them (docs/telemetry.md)."""
        seen, self._oversize = self._oversize, []
        devices = sorted({str(s["device"]) for s in seen})
        await self._publish_alarm(AlarmEvent(
            code="telemetry_oversize",
            severity="warning",
            at=now_ms(),
            message=f"{len(seen)} telemetry message(s) over the size limit refused whole, from "
            f"{', '.join(devices)[:200]}: {seen[0]['message']}",
            details={"count": len(seen), "devices": devices[:50], "examples": seen[:5]},
        ))

    async def _alarm_dropped(self, drops: tuple[int, int, int]) -> None:
        """A full spool that drops undelivered readings is data loss: an alarm, not only a counter."""
        count, oldest, newest = drops
        await self._publish_alarm(AlarmEvent(
            code="telemetry_dropped",
            severity="critical",
            at=now_ms(),
            message=f"the telemetry spool is full ({self.spool.max_bytes} bytes): dropped the {count} oldest "
            f"undelivered reading(s), ts {oldest} to {newest}; is InfluxDB reachable?",
            details={"count": count, "oldest_ts": oldest, "newest_ts": newest, "spool_max_bytes": self.spool.max_bytes,
                     "influx_last_error": self.last_error},
        ))

    async def _alarms_forever(self) -> None:
        interval = self.config.spool.alarm_interval_s
        while True:
            await asyncio.sleep(min(interval, 5.0) if not (self._alarm_pending or self._oversize) else interval)
            drops = self.spool.take_drops()
            if drops is not None:
                await self._alarm_dropped(drops)
            if self._oversize:
                await self._alarm_oversize()
            if not self._alarm_pending:
                continue
            counts, examples = dict(self._alarm_pending), dict(self._alarm_examples)
            self._alarm_pending.clear()
            self._alarm_examples.clear()
            total = sum(counts.values())
            summary = ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items()))
            event = AlarmEvent(
                code="telemetry_rejected",
                severity="warning",
                at=now_ms(),
                message=f"{total} telemetry readings/messages refused in the last {interval:.0f} s: {summary}",
                details={"counts": counts, "examples": examples},
            )
            await self._publish_alarm(event)

    async def _purge_forever(self) -> None:
        while True:
            n = await self.spool.purge_retained()
            if n:
                log.info("spool: deleted %d delivered readings older than %d days", n, self.spool.retain_days)
            await asyncio.sleep(3600)

    def driver_stats(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for d in self.drivers:
            try:
                stats: dict[str, Any] = dict(d.stats())
            except Exception as exc:  # a driver's stats must not break health
                stats = {"stats_error": str(exc)[:200]}
            if self.driver_crashes[d.device_id]:
                stats["crashes"] = self.driver_crashes[d.device_id]
            out[d.device_id] = stats
        for dev, n in dict(self.rejected_by_device).items():  # copy: health runs on another thread
            out.setdefault(dev, {})["rejected"] = n
        return out

    def health(self) -> dict[str, Any]:
        """Merged into the gateway's retained ``health`` payload."""
        return {
            **self.spool.stats(),
            "telemetry_accepted": self.accepted,
            "telemetry_rejected": dict(self.rejected),
            "influx_written": self.written,
            "influx_last_write_ts": self.last_write_ms,
            "influx_last_error": self.last_error,
            "influx_last_error_ts": self.last_error_ms,
            "telemetry_future_limit_ms": self.limits.max_future_ms,
            "driver_errors": self.driver_stats(),
            **(self.ingest.stats() if self.mqtt_devices else {}),
            **({"spool_moved_aside": str(self.spool.moved_aside)} if self.spool.moved_aside else {}),
        }

    def health_fields(self) -> dict[str, float]:
        """The numeric part of the health payload, for the ``gateway_health`` measurement."""
        src: dict[str, Any] = dict(self.health_source()) if self.health_source is not None else {}
        src.update(self.health())
        src["telemetry_rejected_total"] = sum(self.rejected.values())
        fields: dict[str, float] = {}
        for k, v in src.items():
            if isinstance(v, bool):
                fields[k] = float(v)
            elif isinstance(v, int | float) and k != "ts" and v == v and abs(v) != float("inf"):
                fields[k] = float(v)
        return fields

    async def write_gateway_health(self) -> None:
        fields = self.health_fields()
        if fields:
            await self.spool.put([(now_ms(), "", "gateway_health", format_fields(fields))])

    async def _health_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.health.interval_s)
            try:
                await self.write_gateway_health()
            except Exception:
                log.exception("could not spool gateway_health")

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Run everything until cancelled."""
        await self.spool.open()
        if self.spool.moved_aside is not None and self.publish_event is not None:
            event = AlarmEvent(
                code="spool_unreadable",
                severity="critical",
                at=now_ms(),
                message=f"the telemetry spool could not be opened and was moved to "
                f"{self.spool.moved_aside.name}; readings it held were not delivered",
                details={"file": str(self.spool.moved_aside)},
            )
            with contextlib.suppress(Exception):
                await self.publish_event(event)
        tasks: list[asyncio.Task[None]] = []
        try:
            async with asyncio.TaskGroup() as tg:
                tasks.append(tg.create_task(self.spool.run(), name="spool-commit"))
                if self.writer is not None:
                    tasks.append(tg.create_task(self.deliver_forever(), name="influx-writer"))
                else:
                    log.warning("no 'influx' section: readings are spooled but not written anywhere")
                if self.mqtt_devices:
                    tasks.append(tg.create_task(self.ingest.run(), name="telemetry-ingest"))
                for d in self.drivers:
                    tasks.append(tg.create_task(self._run_driver(d), name=f"driver-{d.device_id}"))
                tasks.append(tg.create_task(self._alarms_forever(), name="telemetry-alarms"))
                tasks.append(tg.create_task(self._clock_forever(), name="telemetry-clock"))
                tasks.append(tg.create_task(self._purge_forever(), name="spool-purge"))
                tasks.append(tg.create_task(self._health_forever(), name="gateway-health"))
                self.started.set()
        finally:
            if self.writer is not None:
                await self.writer.close()
            await self.spool.close()


def _build_drivers(ctx: GatewayContext) -> list[SensorDriver]:
    """The sensor drivers of this gateway, from ``devices.sensors.build_sensor_drivers`` (Modbus,
    GPIO, 1-wire, Pi health, simulated); none when that package is absent from this build."""
    try:
        from devices.sensors import build_sensor_drivers
    except ModuleNotFoundError as exc:
        if exc.name is not None and "devices.sensors".startswith(exc.name):
            return []
        raise
    drivers: list[SensorDriver] = build_sensor_drivers(ctx.config.devices, gateway_id=ctx.id, data_dir=ctx.data_dir)
    return drivers


def attach(ctx: GatewayContext) -> TelemetryService:
    """Plug telemetry into the gateway (``gateway.app.SERVICE_MODULES``): the spool, the MQTT ingest,
    the InfluxDB writer and the sensor drivers run as one gateway task; the service's counters join
    the retained ``health``; it provides the context's reading sink (for any other in-process
    producer), calls the context's reading observers, and lists its drivers in ``ctx.sensor_drivers``."""

    def last_health() -> Mapping[str, Any]:
        last = ctx.last_health()
        return last.model_dump() if last is not None else {}

    drivers = _build_drivers(ctx)
    svc = TelemetryService(
        ctx.config,
        data_dir=ctx.data_dir,
        publish_event=ctx.publish_event,
        drivers=drivers,
        health_source=last_health,
        observers=ctx.reading_observers,
    )
    ctx.sensor_drivers.extend(drivers)
    ctx.provide_reading_sink(svc.accept_polled)
    ctx.add_health(svc.health)
    ctx.add_task(svc.run, name="telemetry")
    return svc
