"""Gateway services plug in through a typed context (issue 8, point 16).

- Static: every module of ``SERVICE_MODULES`` is in the ``TYPE_CHECKING`` list of ``gateway.app`` that
  mypy checks against ``ServiceAttach`` (so no service escapes the type check), and each one's
  ``attach`` is annotated with the context, never ``Any``.
- Wiring: services attached in reverse order end up wired the same (a command has one handler).
- End to end: a real gateway whose services attached in *reverse* order, between real brokers, with
  simulated speakers as a real process: a warning rule is accepted (warnings → broadcast media),
  a gauge's readings start the warning (telemetry → warnings → broadcast playback on every speaker),
  and ``device.set`` volume reaches the speakers (fleet → broadcast).
"""

from __future__ import annotations

import ast
import asyncio
import importlib
import inspect
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import gateway.app as app
from gateway.config import load_gateway_config
from gateway.context import GatewayContext
from loaxa.localsetup import gateway_config, make_signer
from protocol.models import DeviceSetBody
from tests.broadcast_env import tone_wav
from tests.conftest import ROOT, wait_until
from tests.test_warnings_gateway import GW, Bench, flood_rule


def test_every_service_attach_is_type_checked() -> None:
    tree = ast.parse((ROOT / "gateway" / "app.py").read_text(encoding="utf-8"))
    typed = next(n for n in ast.walk(tree) if isinstance(n, ast.AnnAssign)
                 and isinstance(n.target, ast.Name) and n.target.id == "_TYPED_ATTACH")
    assert isinstance(typed.value, ast.Tuple)
    listed = [ast.unparse(e).removesuffix(".attach") for e in typed.value.elts]
    assert listed == list(app.SERVICE_MODULES)
    for name in app.SERVICE_MODULES:
        sig = inspect.signature(importlib.import_module(name).attach)
        [param] = sig.parameters.values()
        assert param.annotation not in ("Any", inspect.Parameter.empty), name


def _gateway(tmp_path: Path) -> app.Gateway:
    devices = [{"id": "loa-01", "type": "ip_speaker"}, {"id": "do-mua", "type": "mqtt_sensor",
                                                       "measurement": "rain"}]
    cfg = gateway_config("xa-thu-tu", data_dir=tmp_path / "gw", uplink_url="mqtt://127.0.0.1:1",
                         lan_url="mqtt://127.0.0.1:2", signer=make_signer(), devices=devices, media_port=18099)
    return app.Gateway(app.GatewayConfig.model_validate(cfg))


@pytest.mark.parametrize("order", [1, -1], ids=["listed", "reversed"])
def test_wiring_does_not_depend_on_the_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, order: int) -> None:
    monkeypatch.setattr(app, "SERVICE_MODULES", app.SERVICE_MODULES[::order])
    gw = _gateway(tmp_path)
    gw.attach_services()
    ctx = gw.context
    assert ctx.playback is gw.attached["broadcast"]
    assert ctx.reading_sink is not None and ctx.reading_observers == [gw.attached["warnings"].observe]  # type: ignore[attr-defined]
    assert set(ctx.speakers) == {"loa-01"}
    fleet = gw.attached["fleet"]
    assert gw.commands.handler("device.set") == fleet.on_set  # type: ignore[attr-defined]
    assert {k for k in ("broadcast.plan", "broadcast.cancel", "warning.rules", "gateway.restart")
            if gw.commands.handler(k) is not None} == {"broadcast.plan", "broadcast.cancel", "warning.rules",
                                                        "gateway.restart"}
    gw.commands.close()


def test_a_command_has_one_handler(tmp_path: Path) -> None:
    ctx = GatewayContext(_gateway(tmp_path))

    async def handler(env: Any, body: Any) -> None:
        return None

    ctx.register_command("device.set", handler)
    with pytest.raises(RuntimeError, match="already has a handler"):
        ctx.register_command("device.set", handler)
    with pytest.raises(ValueError, match="no command"):
        ctx.register_command("device.sett", handler)


class InProcessBench(Bench):
    """The warning-rule bench with the gateway run in this process, its services attached in reverse."""

    def start_gateway(self) -> None:
        before = len(self.up.on(f"{GW}/status"))
        config = load_gateway_config(self.config)
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        self.gw = app.Gateway(config)
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.gw.run(self.stop),),
                                       daemon=True)
        self.thread.start()
        wait_until(lambda: any(s.get("state") == "online" for s in self.up.on(f"{GW}/status")[before:]),
                   timeout=45, what="gateway online")

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(60)
        self.loop.close()
        super().close()


@pytest.fixture
def reversed_bench(tmp_path: Path, central_broker_factory: Any, lan_broker_factory: Any,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[InProcessBench]:
    monkeypatch.setattr(app, "SERVICE_MODULES", app.SERVICE_MODULES[::-1])
    b = InProcessBench(tmp_path, central_broker_factory(gateways=[GW]), lan_broker_factory(GW), count=2)
    yield b
    b.close()


def test_services_attached_in_reverse_order_still_work(reversed_bench: InProcessBench) -> None:
    b = reversed_bench
    assert b.gw.services[0] == "warnings"  # it attached before telemetry and broadcast
    media = b.media.add(tone_wav(800), 800)
    assert b.send_rules([flood_rule(media)])["ok"] is True
    b.gauge.hold(170, 4.0)
    started = wait_until(lambda: (lambda s: s if s and len(next(iter(s.values()))) >= len(b.speakers) else None)(
        b.lan_started()), timeout=30, what="warning playing on every speaker")
    assert len(started) == 1
    env = b.signer.envelope("device.set", DeviceSetBody(targets="*", volume=35), gw=GW)
    b.up.publish(f"loaxa/v1/{GW}/cmd", env.model_dump_json())
    ack = wait_until(lambda: [a for a in b.up.on(f"{GW}/ack") if a.get("id") == env.id], timeout=30,
                     what="ack of device.set")
    assert ack[-1]["ok"] is True, ack
    wait_until(lambda: all(b.down.on(f"/dev/{s}/state")[-1].get("volume") == 35 for s in b.speakers),
               timeout=20, what="speakers at volume 35")
