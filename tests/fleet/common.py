"""Shared test bench of the fleet tests: real brokers, a real gateway process, simulated speakers as
real processes, the scheduler in this process, a real SMTP server (aiosmtpd on loopback) and a real
HTTP receiver for webhooks. Nothing here fakes a server; every wait is on an observable condition.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import http.server
import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
from aiosmtpd.controller import Controller

from loaxa.brokers import CentralBroker, LanBroker
from loaxa.localsetup import gateway_config, make_signer, write_yaml
from loaxa.servers import free_port
from scheduler.config import SchedulerConfig
from scheduler.fleet.notify.senders import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify
from scheduler.service import Scheduler
from tests.conftest import spawn_loaxa
from tests.sched_support import Keys, add_token, bearer, scheduler_config_dict, wait_for_async

GW = "xa-an-binh"
COMMUNE = "Xã An Bình"
WEBHOOK_SECRET = "webhook-test-secret"


class SmtpSink:
    """A real SMTP server on loopback that keeps every message it receives."""

    def __init__(self) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.rcpts: list[list[str]] = []
        self._lock = threading.Lock()
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
                with sink._lock:
                    sink.messages.append(msg)  # type: ignore[arg-type]
                    sink.rcpts.append(list(envelope.rcpt_tos))
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)
        self.controller.start()

    def count(self) -> int:
        with self._lock:
            return len(self.messages)

    def text(self, i: int) -> str:
        with self._lock:
            msg = self.messages[i]
        body = msg.get_body(preferencelist=("plain",))
        return str(msg["Subject"]) + "\n" + (body.get_content() if body is not None else "")

    def stop(self) -> None:
        self.controller.stop()


class WebhookSink:
    """An HTTP receiver that checks the signature of each POST; the first ``fail_first`` answer 500."""

    def __init__(self, fail_first: int = 0) -> None:
        self.calls: list[tuple[dict[str, Any], bool]] = []
        self.failures = fail_first
        self.attempts = 0
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *_a: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                sink.attempts += 1
                if sink.failures > 0:
                    sink.failures -= 1
                    self.send_response(500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                ok = verify(WEBHOOK_SECRET, self.headers.get(TIMESTAMP_HEADER, ""), body,
                            self.headers.get(SIGNATURE_HEADER, ""))
                sink.calls.append((json.loads(body), ok))
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def fleet_section(smtp_port: int, webhook_url: str | None = None, **rules: Any) -> dict[str, Any]:
    notify: dict[str, Any] = {
        "group_wait_s": 1.0,
        "retry_initial_s": 0.2,
        "smtp": {"host": "127.0.0.1", "port": smtp_port, "security": "none", "sender": "Loa Xã <canh-bao@loaxa.test>"},
        "contacts": [
            {"name": "Kỹ thuật An Bình", "email": "kythuat@an-binh.test", "roles": ["technician"], "areas": [GW]},
            {"name": "Kỹ thuật xã khác", "email": "kythuat@xa-khac.test", "roles": ["technician"],
             "areas": ["xa-khac"]},
            {"name": "Chủ tịch", "email": "chutich@an-binh.test", "roles": ["approver"], "areas": [GW]},
        ],
        "routes": [{"roles": ["technician"], "min_severity": "warning"},
                   {"roles": ["approver"], "min_severity": "critical"}],
    }
    if webhook_url:
        notify["webhooks"] = [{"name": "zalo-bridge", "url": webhook_url, "secret": {"value": WEBHOOK_SECRET}}]
    base_rules: dict[str, Any] = {
        "speaker_offline": {"after_s": 1, "severity": "minor"},
        "gateway_offline": {"after_s": 2, "severity": "major"},
        "sensor_silent": {"enabled": False},
    }
    base_rules.update(rules)
    return {"evaluate_interval_s": 0.2, "readings_interval_s": 0.5, "action_timeout_s": 20,
            "rules": base_rules, "notify": notify}


@dataclass
class FleetBench:
    """The central broker and the commune's LAN broker run as in production (accounts, ACLs):
    ``central_broker_factory(gateways=[GW])`` and ``lan_broker_factory(GW, devices=[…])``."""

    tmp: Path
    central: CentralBroker
    lan: LanBroker
    devices: list[dict[str, Any]]
    fleet: dict[str, Any]
    influx: dict[str, Any] | None = None
    gateway_influx: dict[str, Any] | None = None
    sims: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    gateway: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        signer = make_signer()
        self.signer = signer
        sections: dict[str, Any] = {"fleet": self.fleet}
        if self.influx:
            sections["influx"] = self.influx
        raw = scheduler_config_dict(self.tmp, self.central, Keys(signer.private_key), gateways=[GW], **sections)
        cfg = SchedulerConfig.model_validate(raw)
        self.sched_yaml = write_yaml(self.tmp / "scheduler.yaml", raw)
        self.sched = Scheduler.build(cfg)
        self.token = add_token(self.sched.store.store, name="fleet-test")
        self.token_file = self.tmp / "token"
        self.token_file.write_text(self.token + "\n")
        self.stop_event = asyncio.Event()
        self.task = asyncio.create_task(self.sched.run(self.stop_event))
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{cfg.http.port}", timeout=60,
                                      headers=bearer(self.token))
        self.write_gateway_config(self.devices)
        self.gateway = spawn_loaxa("gateway", "run", "--config", str(self.gw_yaml), log=self.tmp / "gw.log")

    def write_gateway_config(self, devices: list[dict[str, Any]]) -> None:
        gw_cfg = gateway_config(GW, data_dir=self.tmp / "gw", uplink_url=self.central.url, lan_url=self.lan.url,
                                signer=self.signer, commune=COMMUNE, devices=devices, health_interval_s=2.0,
                                influx=self.gateway_influx, uplink_auth=self.central.gateway_auth(GW),
                                lan_auth=self.lan.gateway_auth())
        self.gw_yaml = write_yaml(self.tmp / "gw.yaml", gw_cfg)

    def start_sim(self, name: str, ids: list[str]) -> None:
        creds = self.lan.write_credentials(self.tmp / f"sim-{name}.json", ids)
        self.sims[name] = spawn_loaxa("sim", "speakers", "--broker", self.lan.device_url, "--gateway", GW,
                                      "--ids", ",".join(ids), "--no-fetch", "--credentials", str(creds),
                                      log=self.tmp / f"sim-{name}.log")

    def device_client(self, dev: str) -> aiomqtt.Client:
        """A device's own connection to the commune broker (its account; client id = its id)."""
        host, port = self.lan.device_url.removeprefix("mqtt://").split(":")
        account = self.lan.add_device(dev)
        return aiomqtt.Client(host, int(port), username=account.username, password=account.password,
                              identifier=dev)

    def kill_sim(self, name: str) -> None:
        """SIGKILL: no goodbye, the LAN broker publishes each speaker's will (offline)."""
        proc = self.sims.pop(name)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    async def api(self, method: str, path: str, **kw: Any) -> Any:
        r = await self.http.request(method, path, **kw)
        assert r.status_code < 300, f"{method} {path}: {r.status_code} {r.text}"
        return r.json()

    async def devices_by_id(self) -> dict[str, dict[str, Any]]:
        try:
            rows = await self.api("GET", "/api/fleet/devices", params={"gateway": GW})
        except (httpx.HTTPError, AssertionError):
            return {}
        return {d["device"]: d for d in rows}

    async def wait_devices(self, want: Callable[[dict[str, dict[str, Any]]], bool], what: str,
                           within: float = 60) -> dict[str, dict[str, Any]]:
        async def check() -> dict[str, dict[str, Any]] | None:
            d = await self.devices_by_id()
            return d if want(d) else None

        result: dict[str, dict[str, Any]] = await wait_for_async(check, within=within, what=what, interval=0.1)
        return result

    async def alarms(self, status: str = "active") -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self.api("GET", "/api/alarms", params={"status": status, "gateway": GW})
        return rows

    async def wait_alarms(self, want: Callable[[list[dict[str, Any]]], bool], what: str, status: str = "active",
                          within: float = 60) -> list[dict[str, Any]]:
        async def check() -> tuple[list[dict[str, Any]]] | None:
            rows = await self.alarms(status)
            return (rows,) if want(rows) else None  # a tuple: an empty list is an answer too

        (rows,) = await wait_for_async(check, within=within, what=what, interval=0.1)
        return rows

    async def close(self) -> None:
        for name in list(self.sims):
            self.kill_sim(name)
        if self.gateway is not None and self.gateway.poll() is None:
            self.gateway.send_signal(signal.SIGTERM)
            try:
                self.gateway.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.gateway.pid, signal.SIGKILL)
        self.stop_event.set()
        await asyncio.wait_for(self.task, 30)
        await self.http.aclose()

    def logs(self) -> str:
        out = []
        for f in sorted(self.tmp.glob("*.log")):
            out.append(f"--- {f.name}\n{f.read_text(errors='replace')[-3000:]}")
        return "\n".join(out)
