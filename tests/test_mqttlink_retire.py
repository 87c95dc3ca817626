"""A connect that times out leaves no ghost connection and no unread error behind.

Seen in gateway logs while the central broker was slow or down: "Future exception was never retrieved
… MqttCodeError('Unexpected disconnection')". A connect attempt that timed out completed later (the
CONNACK came late), so an abandoned client was connected under the gateway's client id until the next
attempt took the session over; its disconnection error was never read. Here a real central broker sits
behind a TCP proxy that holds the broker's answers on the first connection for longer than the connect
timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from typing import Any

import pytest

from loaxa.mqttconf import MqttEndpoint
from loaxa.mqttlink import MqttLink

GW = "xa-ghost"


class SlowFirstProxy:
    """TCP proxy to ``port``; the broker's bytes on the first connection are held for ``hold_s``."""

    def __init__(self, port: int, hold_s: float) -> None:
        self.target, self.hold_s = port, hold_s
        self.connections = 0
        #: connections the client side closed while the broker's answers were still held
        self.closed_early: list[int] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        n = self.connections
        up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target)
        self._writers += [writer, up_w]
        release = asyncio.get_running_loop().time() + (self.hold_s if n == 1 else 0)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, hold: bool) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    if hold:
                        await asyncio.sleep(max(0.0, release - asyncio.get_running_loop().time()))
                    dst.write(data)
                    await dst.drain()
            if not hold and asyncio.get_running_loop().time() < release:
                self.closed_early.append(n)
            with contextlib.suppress(OSError):
                dst.close()

        for t in (asyncio.create_task(pump(reader, up_w, False)), asyncio.create_task(pump(up_r, writer, True))):
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        self.server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for w in self._writers:  # a client still connected through us sees its connection end
            w.close()


async def test_a_timed_out_connect_is_closed_and_its_error_read(central_broker_factory: Any,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    central = central_broker_factory(gateways=[GW])
    user, password = central.gateway_auth(GW)
    proxy = SlowFirstProxy(central.port, hold_s=2.0)
    port = await proxy.start()
    endpoint = MqttEndpoint.model_validate({"url": f"mqtt://127.0.0.1:{port}", "username": user,
                                            "password": {"value": password}, "reconnect_max_s": 1})
    link = MqttLink(endpoint, client_id=f"loaxa-gw-{GW}", name="uplink", connect_timeout_s=0.5)
    caplog.set_level(logging.ERROR, logger="asyncio")
    runner = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(link.connected.wait(), 30)
        assert proxy.connections >= 2 and link.reconnects >= 1  # the first attempt timed out
        await asyncio.sleep(proxy.hold_s + 0.5)  # the held CONNACK (and a takeover, if any) arrive
        # the abandoned first connection was closed by the gateway's side, not left to complete
        assert proxy.closed_early == [1]
        assert link.connected.is_set() and link.reconnects == 1, "the live connection was taken over"
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        await proxy.close()
    await asyncio.sleep(0.5)  # a client still holding a socket sees it closed now
    gc.collect()
    await asyncio.sleep(0)
    never = [r.getMessage() for r in caplog.records if "never retrieved" in r.getMessage()]
    assert not never, never
