"""A local control socket so ``loaxa firmware update`` can update a node while the gateway runs.

The gateway holds its serial ports; instead of stopping it, the command connects to the Unix socket
``{data_dir}/serial.sock`` (mode 0600: only the gateway's own user and root) and the gateway runs the
update on its own bus, between the polls of the other nodes.

Exchange (one request per connection): the client sends one JSON line
``{"op": "update", "device": ..., "version": ..., "size": N, "sha256": ..., "force": false}`` followed by
exactly N image bytes, or ``{"op": "info", "device": ...}``. The gateway answers JSON lines:
``{"progress": [done, total, phase]}`` … then ``{"result": {...}}`` or ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from firmware_bridge.errors import BridgeError

log = logging.getLogger(__name__)

MAX_IMAGE = 16 * 1024 * 1024
SOCKET_NAME = "serial.sock"


class ControlRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    op: Literal["update", "info"]
    device: str = Field(min_length=1, max_length=64)
    version: str | None = Field(default=None, min_length=1, max_length=32)
    size: int = Field(default=0, ge=0, le=MAX_IMAGE)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    force: bool = False


#: ``handler(request, image, emit)``; ``emit(obj)`` queues one JSON line to the client (never blocks)
Handler = Callable[[ControlRequest, bytes, Callable[[dict[str, Any]], None]], Awaitable[dict[str, Any]]]


class ControlServer:
    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        old = os.umask(0o177)  # the socket is created 0600
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=8192)
        finally:
            os.umask(old)
        log.info("serial control socket at %s", self.path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        def emit(obj: dict[str, Any]) -> None:
            if not writer.is_closing():
                writer.write(json.dumps(obj).encode() + b"\n")

        async def send(obj: dict[str, Any]) -> None:
            emit(obj)
            await writer.drain()

        try:
            try:
                line = await asyncio.wait_for(reader.readline(), 10)
                req = ControlRequest.model_validate_json(line)
                image = await asyncio.wait_for(reader.readexactly(req.size), 120) if req.size else b""
            except (ValidationError, ValueError) as exc:
                await send({"error": f"bad request: {exc}"[:1000]})
                return
            except (TimeoutError, asyncio.IncompleteReadError):
                await send({"error": "incomplete request"})
                return
            try:
                result = await self._handler(req, image, emit)
            except (BridgeError, KeyError, ValueError) as exc:
                await send({"error": str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)})
                return
            await send({"result": result})
        except (ConnectionError, BrokenPipeError):
            pass  # the client went away; an update it started goes on to the end
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def request(path: Path, req: ControlRequest, image: bytes,
                  on_progress: Callable[[int, int, str], None]) -> dict[str, Any]:
    """Client side: send ``req`` (and the image), relay progress, return the result or raise BridgeError."""
    try:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=1 << 20)
    except OSError as exc:
        raise BridgeError(f"cannot reach the gateway at {path}: {exc.strerror or exc}") from None
    try:
        writer.write(req.model_dump_json(exclude_none=True).encode() + b"\n" + image)
        await writer.drain()
        while True:
            line = await reader.readline()
            if not line:
                raise BridgeError("the gateway closed the connection before answering")
            msg = json.loads(line)
            if "progress" in msg:
                done, total, phase = msg["progress"]
                on_progress(int(done), int(total), str(phase))
            elif "error" in msg:
                raise BridgeError(str(msg["error"]))
            elif "result" in msg:
                return dict(msg["result"])
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def result_dict(result: Any) -> dict[str, Any]:
    return asdict(result)
