"""Sensors for the fault tests: a plain QoS 1 sensor (trusts the broker's PUBACK) and a receipt-aware
one (keeps each reading until the gateway's receipt, sends again after reconnecting)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from devices.sim.receipts import ReceiptBuffer
from loaxa.brokers import LanBroker
from protocol.models import Reading
from protocol.topics import device_topic

from .helpers import GW


class FaultSensor:
    """One device on the LAN broker's device listener, publishing single readings at QoS 1 through
    paho's own network thread (which reconnects by itself and keeps unacknowledged messages)."""

    def __init__(self, lan: LanBroker, device: str, *, receipts: bool, resend_after_s: float = 5.0) -> None:
        account = lan.add_device(device)
        self.device = device
        self.topic = device_topic(GW, device, "telemetry")
        self.receipt_topic = device_topic(GW, device, "receipt")
        self.receipts = receipts
        self.buffer = ReceiptBuffer(resend_after_s=resend_after_s) if receipts else None
        self.lock = threading.Lock()
        self.sent: dict[int, float] = {}  # ts → value, every reading sent (once, resends not counted)
        self.acked: set[int] = set()  # ts the broker PUBACKed
        self._mids: dict[int, int] = {}
        self._early: set[int] = set()
        self.connects = 0
        self.connected = threading.Event()
        c = self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=device, protocol=paho.MQTTv311,
                                      clean_session=True)
        c.username_pw_set(account.username, account.password)
        c.max_inflight_messages_set(100)
        c.reconnect_delay_set(0.2, 1)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        c.on_message = self._on_message
        c.connect("127.0.0.1", lan.device_port, keepalive=5)
        c.loop_start()
        if not self.connected.wait(15):
            raise RuntimeError(f"sensor {device} could not connect to the LAN broker")

    # paho's thread
    def _on_connect(self, c: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        if rc.is_failure:
            return
        self.connects += 1
        if self.buffer is not None:
            c.subscribe(self.receipt_topic, qos=1)
            with self.lock:
                again = self.buffer.unreceipted() if self.connects > 1 else []
            for r in again:  # after a reconnection: everything without a receipt, again
                self._publish(r)
        self.connected.set()

    def _on_disconnect(self, *_a: Any) -> None:
        self.connected.clear()

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        with self.lock:  # never held around a paho call (paho holds its own locks around callbacks)
            ts = self._mids.pop(mid, None)
            if ts is not None:
                self.acked.add(ts)
            else:  # the PUBACK came before publish() returned its mid
                self._early.add(mid)

    def _on_message(self, _c: paho.Client, _u: Any, msg: paho.MQTTMessage) -> None:
        if self.buffer is not None:
            with self.lock:
                self.buffer.on_receipt(msg.payload)

    def _publish(self, r: Reading) -> None:
        payload = json.dumps({"ts": r.ts, "fields": r.fields})
        info = self.client.publish(self.topic, payload, qos=1)
        with self.lock:
            if info.mid in self._early:
                self._early.discard(info.mid)
                self.acked.add(r.ts)
            else:
                self._mids[info.mid] = r.ts

    # the test's thread
    def send(self, ts: int, value: float) -> None:
        r = Reading(ts=ts, fields={"level_cm": value})
        with self.lock:
            self.sent[ts] = value
            if self.buffer is not None:
                self.buffer.add(r)
        self._publish(r)

    def resend_due(self) -> None:
        if self.buffer is None:
            return
        with self.lock:
            due = self.buffer.due()
        for r in due:
            self._publish(r)

    def held(self) -> int:
        with self.lock:
            return len(self.buffer) if self.buffer is not None else 0

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def stream(sensors: list[FaultSensor], t0: int, n: int, rate_per_s: float, stop: threading.Event) -> None:
    """Each sensor sends readings ``t0 + i`` (i < n) at ``rate_per_s``, whatever happens to the broker."""
    start = time.monotonic()
    for i in range(n):
        if stop.is_set():
            return
        for s in sensors:
            s.send(t0 + i, round(i * 0.25, 2))
        delay = start + (i + 1) / rate_per_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
