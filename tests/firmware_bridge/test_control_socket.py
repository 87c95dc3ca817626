"""The gateway's serial control socket refuses bad requests clearly and stays up."""

from __future__ import annotations

import asyncio
import json
import stat
from pathlib import Path
from typing import Any

import pytest

from firmware_bridge.errors import BridgeError
from gateway.serial.control import ControlRequest, ControlServer, request


async def test_control_socket_requests(tmp_path: Path) -> None:
    seen: list[tuple[str, int]] = []

    async def handler(req: ControlRequest, image: bytes, emit: Any) -> dict[str, Any]:
        if req.device != "loa-1":
            raise KeyError(f"no serial_node device {req.device!r}")
        emit({"progress": [1, 2, "transfer"]})
        seen.append((req.op, len(image)))
        return {"ok": True, "size": len(image)}

    server = ControlServer(tmp_path / "serial.sock", handler)
    await server.start()
    try:
        assert stat.S_IMODE((tmp_path / "serial.sock").stat().st_mode) == 0o600
        progress: list[tuple[int, int, str]] = []
        res = await request(tmp_path / "serial.sock", ControlRequest(op="update", device="loa-1", version="2.0",
                                                                      size=3), b"abc",
                            lambda d, t, p: progress.append((d, t, p)))
        assert res == {"ok": True, "size": 3} and progress == [(1, 2, "transfer")] and seen == [("update", 3)]
        with pytest.raises(BridgeError, match="no serial_node device 'x'"):
            await request(tmp_path / "serial.sock", ControlRequest(op="info", device="x"), b"", lambda *_: None)
        for junk in (b"not json\n", b'{"op": "format", "device": "loa-1"}\n',
                     b'{"op": "update", "device": "loa-1", "size": 999999999}\n'):
            reader, writer = await asyncio.open_unix_connection(str(tmp_path / "serial.sock"))
            writer.write(junk)
            answer = json.loads(await reader.readline())
            writer.close()
            assert answer["error"].startswith("bad request")
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "serial.sock"))
        writer.write(b'{"op": "update", "device": "loa-1", "version": "1", "size": 10}\nabc')
        writer.write_eof()
        assert json.loads(await reader.readline()) == {"error": "incomplete request"}
        writer.close()
        assert seen == [("update", 3)]  # none of the bad requests reached the handler
    finally:
        await server.close()
    assert not (tmp_path / "serial.sock").exists()
    with pytest.raises(BridgeError, match="cannot reach the gateway"):
        await request(tmp_path / "serial.sock", ControlRequest(op="info", device="x"), b"", lambda *_: None)
