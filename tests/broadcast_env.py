"""Test bench for the gateway side of the broadcast path: real brokers, a real gateway process,
simulated speakers as a real process, a media HTTP server with Range support, and a recorder of
everything published on each broker. Shared by tests/test_broadcast_gateway.py and bench/fanout.py.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import math
import struct
import threading
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from loaxa.servers import MosquittoUser
from protocol.models import MediaRef


def tone_wav(duration_ms: int, freq: float = 440.0, rate: int = 8000) -> bytes:
    """A mono 16-bit sine tone as WAV bytes (real audio that ffmpeg can decode)."""
    n = rate * duration_ms // 1000
    frames = b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * freq * i / rate))) for i in range(n))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return buf.getvalue()


class MediaServer:
    """``GET /media/{sha256}`` with ``Range: bytes=N-`` support, in a thread, on a free port.

    ``tamper`` maps a sha256 to other bytes to serve for it; ``cut_after`` makes the first answer
    for a sha256 stop after that many bytes (to exercise resumed downloads).
    """

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.tamper: dict[str, bytes] = {}
        self.cut_after: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_a: Any) -> None:
                pass

            def do_GET(self) -> None:
                sha = self.path.rsplit("/", 1)[-1]
                rng = self.headers.get("Range")
                server.requests.append((sha, rng))
                data = server.tamper.get(sha, server.blobs.get(sha))
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = 0
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                body = data[start:]
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                cut = server.cut_after.pop(sha, None)
                if cut is not None:
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def add(self, data: bytes, duration_ms: int) -> MediaRef:
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        return MediaRef(sha256=sha, url=f"http://127.0.0.1:{self.port}/media/{sha}", bytes=len(data),
                        duration_ms=duration_ms, content_type="audio/wav")

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class Recorder:
    """Records every message under ``loaxa/v1/#`` on one broker; re-subscribes after a reconnect.

    On a production broker it logs in with ``user``: ``scheduler`` on the central broker (reads
    everything, may publish commands), ``gateway`` on a commune LAN broker's loopback listener.
    """

    port: int
    user: MosquittoUser | None = None
    messages: list[tuple[float, str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5,
                                  client_id=f"recorder-{self.port}-{time.monotonic_ns()}")
        if self.user is not None:
            self.client.username_pw_set(self.user.username, self.user.password)
        self.client.on_connect = lambda c, *_a: c.subscribe("loaxa/v1/#", qos=1)
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 1)
        # a session that outlives the connection (and a broker restart: the test brokers persist), so
        # that what is published while the recorder reconnects is queued for it, not lost
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", self.port, clean_start=paho.MQTT_CLEAN_START_FIRST_ONLY, properties=props)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: paho.MQTTMessage) -> None:
        try:
            payload = json.loads(msg.payload) if msg.payload else {}
        except ValueError:
            payload = {"_raw": msg.payload[:100]}
        with self._lock:
            self.messages.append((time.time(), msg.topic, payload))

    def on(self, suffix: str, pred: Callable[[Any], bool] = lambda _p: True) -> list[Any]:
        with self._lock:
            return [p for _t, topic, p in self.messages if topic.endswith(suffix) and pred(p)]

    def playback(self, broadcast_id: str, state: str | None = None) -> dict[str, dict[str, Any]]:
        """Playback events of one broadcast by device (last event of that state wins)."""
        out: dict[str, dict[str, Any]] = {}
        for p in self.on("/event", lambda p: p.get("kind") == "playback" and p.get("broadcast_id") == broadcast_id
                         and (state is None or p.get("state") == state)):
            out[p["device"]] = p
        return out

    def states(self, broadcast_id: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for p in self.on("/event", lambda p: p.get("kind") == "playback" and p.get("broadcast_id") == broadcast_id):
            out.setdefault(p["device"], []).append(p["state"])
        return out

    def publish(self, topic: str, payload: bytes | str) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
