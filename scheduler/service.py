"""Assemble and run the scheduler: database, media library, signer, MQTT dispatcher, HTTP server."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fastapi import FastAPI
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from loaxa import sdnotify
from loaxa.mqttlink import MqttLink
from protocol.signing import Signer, load_private_key
from scheduler.access.deps import client_address, require
from scheduler.access.media_urls import MediaUrlError, MediaUrlSigner, load_or_create_secret
from scheduler.access.permissions import FLEET_READ, IOC_READ
from scheduler.access.service import Access
from scheduler.access.store import AccessStore
from scheduler.areas.routes import groups_router
from scheduler.config import SchedulerConfig
from scheduler.db import AsyncStore, Store, default_url
from scheduler.dispatcher import Dispatcher
from scheduler.fleet.routes import make_router as fleet_router
from scheduler.fleet.service import Fleet
from scheduler.http import create_app
from scheduler.ioc import IocApi, IocSettings, IocSetupError
from scheduler.media import MediaLibrary, Target
from scheduler.metrics import SchedulerMetrics
from scheduler.schedules.feed import FeedSigner, feed_router
from scheduler.schedules.planner import Planner
from scheduler.schedules.routes import schedules_router
from scheduler.schedules.store import ScheduleStore
from scheduler.store.migrate import MigrationError

log = logging.getLogger(__name__)
#: How long a clean stop may take before the process exits anyway (uvicorn waits for open
#: requests); below the 15 s that callers (tests, the demo) give it.
STOP_TIMEOUT_S = 10.0


def base_url(cfg: SchedulerConfig) -> str:
    """Where gateways (and the CLI) reach this scheduler over HTTP."""
    if cfg.http.public_url:
        return cfg.http.public_url.rstrip("/")
    host = cfg.http.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{cfg.http.port}"


def local_api_url(cfg: SchedulerConfig) -> str:
    """Where a CLI on the scheduler's own machine reaches the API."""
    host = cfg.http.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{cfg.http.port}"


class SetupError(Exception):
    """The scheduler cannot start as configured (the message names the config key)."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


NO_ACCOUNTS = (
    "http.host is {host}, which other machines can reach, but the scheduler has no accounts yet, so "
    "nobody could sign in and nothing would be protected. Create the first admin with:\n"
    "  loaxa users add --config <this config> --role admin <login>\n"
    "or bind http.host to 127.0.0.1 until then."
)


def media_url_signer(cfg: SchedulerConfig) -> MediaUrlSigner:
    import base64

    try:
        if cfg.http.media_url_secret is not None:
            secret = base64.b64decode(cfg.http.media_url_secret.get().strip(), validate=True)
        else:
            secret = load_or_create_secret(cfg.scheduler.data_dir / "media-url.key")
        return MediaUrlSigner(secret, base_url(cfg))
    except (ValueError, RuntimeError, OSError, MediaUrlError) as exc:
        raise SetupError(f"http.media_url_secret: {exc}") from exc


@dataclass
class Scheduler:
    config: SchedulerConfig
    store: AsyncStore
    library: MediaLibrary
    dispatcher: Dispatcher
    app: FastAPI
    fleet: Fleet
    planner: Planner
    ioc: IocApi | None = None
    warnings: Any = None  # scheduler.warnings.service.Warnings: CAP intake and feed pollers

    @classmethod
    def build(cls, cfg: SchedulerConfig) -> Scheduler:
        data_dir = cfg.scheduler.data_dir
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            (data_dir / "media" / "tmp").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SetupError(f"scheduler.data_dir {data_dir}: {exc.strerror}") from exc
        url = cfg.scheduler.database_url or default_url(data_dir)
        try:
            store = Store(url)
        except (SQLAlchemyError, ImportError) as exc:  # ImportError: no driver for this URL
            raise SetupError(f"database {make_url(url).render_as_string(hide_password=True)}: {exc}") from exc
        try:
            store.upgrade()  # Alembic migrations to the newest schema (adopts a pre-migration database)
            store.register_gateways((g.id, g.commune) for g in cfg.gateways)
            known = store.gateway_ids()
        except (SQLAlchemyError, ImportError, MigrationError) as exc:
            store.close()
            raise SetupError(f"database {make_url(url).render_as_string(hide_password=True)}: {exc}") from exc
        unlisted = sorted(set(known) - {g.id for g in cfg.gateways})
        if unlisted:
            # registered through the API, or (before this version) created from any topic heard
            log.warning("gateways in the database but not under 'gateways' in the config (still served; "
                        "check them with 'loaxa scheduler gateways'): %s", ", ".join(unlisted[:50]))
        library = MediaLibrary(
            data_dir / "media",
            max_bytes=cfg.http.max_upload_bytes,
            max_duration_s=cfg.media.max_duration_s,
            transcode_to=cfg.media.transcode,
            bitrate_kbps=cfg.media.bitrate_kbps,
            speech_bitrate_kbps=cfg.media.speech_bitrate_kbps,
            tts_voice=cfg.media.tts_voice,
            target=Target(cfg.media.loudness_lufs, cfg.media.true_peak_dbtp),
        )
        try:
            signer = Signer.for_key(load_private_key(cfg.signing.private_key.get()))
        except (ValueError, RuntimeError) as exc:
            raise SetupError(f"signing.private_key: {exc}") from exc
        if cfg.signing.key_id is not None and cfg.signing.key_id != signer.key_id:
            raise SetupError(f"signing.key_id: {cfg.signing.key_id!r} is not the id of signing.private_key; "
                             f"it is {signer.key_id!r} (or leave key_id out)")
        if cfg.http.api_token is not None:
            raise SetupError(
                "http.api_token: the shared API token was replaced by per-machine tokens with roles; remove it "
                "and create one with `loaxa tokens create --config <this config> NAME --role ROLE`"
            )
        if not is_loopback(cfg.http.host) and not AccessStore(store.session).has_accounts():
            raise SetupError(NO_ACCOUNTS.format(host=cfg.http.host))
        signer_urls = media_url_signer(cfg)

        link = MqttLink(cfg.broker, client_id=f"loaxa-scheduler-{socket.gethostname()}"[:128], name="central",
                       max_inflight=1000)
        astore = AsyncStore(store)
        dispatcher = Dispatcher(
            astore,
            link,
            signer,
            signer_urls.url,
            resend_interval_s=cfg.dispatch.resend_interval_s,
            max_late_s=cfg.dispatch.max_late_s,
            gateways=known,  # the configured ones (registered above) and those added through the API
            share_group=cfg.dispatch.share_group,
        )
        secure = cfg.access.secure_cookies
        if secure is None:
            secure = (cfg.http.public_url or "").startswith("https://")
        access = Access(
            astore,
            signer_urls,
            secure_cookies=secure,
            session_ttl_s=cfg.access.session_hours * 3600,
            idle_s=cfg.access.idle_minutes * 60,
        )
        metrics = SchedulerMetrics(
            astore,
            lambda: {
                "mqtt_connected": float(dispatcher.link.connected.is_set()),
                "commands_published": float(dispatcher.sent),
                "messages_received": float(dispatcher.received),
            },
        )
        planner = Planner(ScheduleStore(store), dispatcher,
                          horizon=timedelta(days=cfg.dispatch.schedule_horizon_days),
                          interval_s=cfg.dispatch.schedule_top_up_s)
        routers = [metrics.router(require(FLEET_READ)), schedules_router(planner, timezone=cfg.scheduler.timezone),
                   groups_router(dispatcher),
                   feed_router(FeedSigner(signer_urls.secret, signer_urls.base_url), planner.schedules, astore)]
        fleet = Fleet(cfg.fleet, dispatcher, influx=cfg.influx, timezone=cfg.scheduler.timezone)
        ioc: IocApi | None = None
        if cfg.influx is not None:
            try:
                ioc = IocApi(IocSettings.from_section(cfg.influx), require(IOC_READ),
                             known_gateways=lambda: astore.call(astore.store.gateways), registry=metrics.registry,
                             alarms=fleet.alarm_list)
            except IocSetupError as exc:
                raise SetupError(str(exc)) from exc
            routers.append(ioc.router)

        async def fleet_audit(p: Any, request: Any, action: str, target: str | None, detail: dict[str, Any]) -> None:
            await access.audit(p, action, address=client_address(request), target=target, detail=detail)

        routers.append(fleet_router(fleet, require, fleet_audit))
        app = create_app(dispatcher, library, access=access, timezone=cfg.scheduler.timezone)
        app.state.fleet = fleet  # the web UI's fleet page reads its live state
        app.state.planner = planner  # the web UI's schedule and approval pages act through it
        app.state.ioc = ioc  # … and a commune page its readings (None without an influx: section)
        from scheduler.warnings.service import build_warnings

        warnings = build_warnings(cfg, dispatcher, library, access)
        routers.append(warnings.router)
        app.state.cap_intake = warnings.intake  # the approval page lists and approves pending CAP alerts
        for router in routers:  # /metrics, /ioc/v1, /api/fleet, /api/alarms, /api/cap and warning rules
            app.include_router(router)
        return cls(cfg, astore, library, dispatcher, app, fleet, planner, ioc, warnings)

    async def _systemd(self, server: Any) -> None:
        """READY=1 once HTTP listens; then WATCHDOG=1 while the event loop and the database thread answer."""
        while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for this
            await asyncio.sleep(0.05)
        sdnotify.notify(f"READY=1\nSTATUS=scheduler on {local_api_url(self.config)}")
        interval = sdnotify.watchdog_interval_s()
        if interval is None:
            return
        while True:
            try:
                await asyncio.wait_for(self.store.call(self.store.store.ping), interval)
            except Exception:
                log.exception("database did not answer within %.0f s; not feeding the watchdog", interval)
            else:
                sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        import uvicorn

        class _Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:  # the scheduler handles SIGTERM/SIGINT itself
                yield

        server = _Server(
            uvicorn.Config(
                self.app,
                host=self.config.http.host,
                port=self.config.http.port,
                log_level="warning",
                lifespan="off",
                access_log=False,
                timeout_graceful_shutdown=3,  # live pages (SSE) would otherwise hold a stop forever
            )
        )
        stop = stop or asyncio.Event()
        disp = asyncio.create_task(self.dispatcher.run(), name="dispatcher")
        fleet = asyncio.create_task(self.fleet.run(), name="fleet")
        http = asyncio.create_task(server.serve(), name="http")
        waiter = asyncio.create_task(stop.wait(), name="stop")
        systemd = asyncio.create_task(self._systemd(server), name="systemd")
        feeds = asyncio.create_task(self.warnings.run() if self.warnings else asyncio.sleep(0), name="cap-feeds")
        planner = asyncio.create_task(self.planner.run(), name="schedule-planner")
        try:
            done, _ = await asyncio.wait({disp, fleet, http, waiter}, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                if t is waiter:
                    continue
                exc = t.exception()
                if exc is not None:
                    log.error("scheduler: %s failed; stopping", t.get_name(), exc_info=exc)
                    raise exc
                log.error("scheduler: %s ended on its own; stopping", t.get_name())
        finally:
            sdnotify.notify("STOPPING=1")
            server.should_exit = True
            disp.cancel()
            fleet.cancel()
            waiter.cancel()
            systemd.cancel()
            feeds.cancel()
            planner.cancel()
            _, pending = await asyncio.wait({disp, fleet, http, waiter, systemd, feeds, planner},
                                            timeout=STOP_TIMEOUT_S)
            if pending:
                log.error("scheduler: %s did not stop within %.0f s; exiting anyway",
                          ", ".join(sorted(t.get_name() for t in pending)), STOP_TIMEOUT_S)
                for t in pending:
                    t.cancel()
                await asyncio.wait(pending, timeout=2)
            if self.ioc is not None:
                await self.ioc.aclose()
            await asyncio.to_thread(self.store.close)


def run_forever(cfg: SchedulerConfig) -> int:
    async def main() -> None:
        sched = Scheduler.build(cfg)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        print(
            f"scheduler: HTTP on {local_api_url(cfg)} (media URL base {base_url(cfg)}), "
            f"broker {cfg.broker.url}, database {sched.store.store.url}",
            flush=True,
        )
        await sched.run(stop)

    asyncio.run(main())
    return 0
