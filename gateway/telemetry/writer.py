"""Write line protocol to InfluxDB: v1 ``/write`` (InfluxDB 1.x) or the v2 write API through
influxdb-client's async client (InfluxDB 2.x/3.x, 1.8+ compatibility API, VictoriaMetrics).

A writer sends one batch and classifies the outcome; retrying, splitting and quarantining are the
service's job:

* 2xx → done;
* 400 / 422 (the server refuses the data: unparsable line, field type conflict) → :class:`RejectedData`;
* 413 (body too large) → :class:`TooLarge` (the service splits the batch);
* anything else (5xx, 401/403/404, 429, timeouts, refused connections, DNS) → :class:`TransientError`.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import ssl
from collections.abc import Sequence
from typing import Protocol

import aiohttp

from gateway.config import InfluxSection


class WriteError(Exception):
    """A batch was not written. ``status`` is the HTTP status, 0 when there was no answer."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class TransientError(WriteError):
    """Retry later (server down, overloaded, timeout, not authorised yet, database missing)."""


class RejectedData(WriteError):
    """The server refused the data itself (HTTP 400/422): retrying the same lines will not help."""


class TooLarge(WriteError):
    """HTTP 413: send fewer lines per request."""


class Writer(Protocol):
    async def write(self, lines: Sequence[str]) -> None: ...

    async def close(self) -> None: ...


def classify(status: int, message: str) -> WriteError:
    text = f"HTTP {status}: {message.strip()[:500]}"
    if status in (400, 422):
        return RejectedData(text, status)
    if status == 413:
        return TooLarge(text, status)
    return TransientError(text, status)


def ssl_context(cfg: InfluxSection) -> ssl.SSLContext | None:
    if not cfg.url.startswith("https://"):
        return None
    ctx = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
    if not cfg.verify_tls:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class V1Writer:
    """``POST {url}/write?db=…&rp=…&precision=ms`` (InfluxDB 1.x, also 2.x/3.x v1 compatibility)."""

    def __init__(self, cfg: InfluxSection) -> None:
        self.cfg = cfg
        self._session: aiohttp.ClientSession | None = None
        params = {"db": cfg.database or "", "precision": "ms"}
        if cfg.retention_policy:
            params["rp"] = cfg.retention_policy
        self._params = params
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if cfg.token is not None:
            headers["Authorization"] = f"Token {cfg.token.get()}"
        elif cfg.username:
            pw = cfg.password.get() if cfg.password else ""
            headers["Authorization"] = "Basic " + base64.b64encode(f"{cfg.username}:{pw}".encode()).decode()
        if cfg.gzip:
            headers["Content-Encoding"] = "gzip"
        self._headers = headers
        self._url = cfg.url.rstrip("/") + "/write"

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            ctx = ssl_context(self.cfg)
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s),
                connector=aiohttp.TCPConnector(ssl=ctx if ctx is not None else False, limit=4),
            )
        return self._session

    async def write(self, lines: Sequence[str]) -> None:
        body = "\n".join(lines).encode()
        if self.cfg.gzip:
            body = await asyncio.to_thread(gzip.compress, body, 1) if len(body) > 256_000 else gzip.compress(body, 1)
        try:
            async with self._get_session().post(self._url, params=self._params, data=body,
                                                headers=self._headers) as resp:
                if 200 <= resp.status < 300:
                    return
                raise classify(resp.status, await resp.text(errors="replace"))
        except WriteError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class V2Writer:
    """influxdb-client ``InfluxDBClientAsync`` write API, millisecond precision."""

    def __init__(self, cfg: InfluxSection) -> None:
        self.cfg = cfg
        self._client: object | None = None

    def _get_api(self) -> object:
        from influxdb_client.client.influxdb_client_async import InfluxDBClientAsync

        if self._client is None:
            kw: dict[str, object] = {"verify_ssl": self.cfg.verify_tls}
            if self.cfg.ca_file:
                kw["ssl_ca_cert"] = str(self.cfg.ca_file)
            if self.cfg.token is None and self.cfg.username:
                kw["username"] = self.cfg.username
                kw["password"] = self.cfg.password.get() if self.cfg.password else ""
            self._client = InfluxDBClientAsync(
                url=self.cfg.url, token=self.cfg.token.get() if self.cfg.token else None,
                org=self.cfg.org or "-", timeout=int(self.cfg.timeout_s * 1000), enable_gzip=self.cfg.gzip, **kw)
        return self._client.write_api()  # type: ignore[attr-defined]

    async def write(self, lines: Sequence[str]) -> None:
        from influxdb_client import WritePrecision
        from influxdb_client.rest import ApiException

        try:
            await self._get_api().write(  # type: ignore[attr-defined]
                bucket=self.cfg.bucket, org=self.cfg.org or "-", record="\n".join(lines),
                write_precision=WritePrecision.MS)
        except ApiException as exc:
            body = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else str(exc.body or exc.reason)
            raise classify(int(exc.status or 0), body) from exc
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()  # type: ignore[attr-defined]
            self._client = None


def make_writer(cfg: InfluxSection) -> Writer:
    return V1Writer(cfg) if cfg.api == "v1" else V2Writer(cfg)
