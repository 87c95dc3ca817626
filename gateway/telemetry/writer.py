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
import http.client
import ssl
import urllib.parse
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

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
    """``POST {url}/write?db=…&rp=…&precision=ms`` (InfluxDB 1.x, also 2.x/3.x v1 compatibility).

    Uses the standard library's ``http.client`` on one worker thread with a kept-alive connection:
    one request at a time is all the writer ever sends, and it keeps the gateway's memory small
    (aiohttp alone costs a Pi about 20 MB)."""

    def __init__(self, cfg: InfluxSection) -> None:
        self.cfg = cfg
        u = urllib.parse.urlsplit(cfg.url)
        self._https = u.scheme == "https"
        self._host = u.hostname or "localhost"
        self._port = u.port or (443 if self._https else 80)
        params = {"db": cfg.database or "", "precision": "ms"}
        if cfg.retention_policy:
            params["rp"] = cfg.retention_policy
        self._path = u.path.rstrip("/") + "/write?" + urllib.parse.urlencode(params)
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if cfg.token is not None:
            headers["Authorization"] = f"Token {cfg.token.get()}"
        elif cfg.username:
            pw = cfg.password.get() if cfg.password else ""
            headers["Authorization"] = "Basic " + base64.b64encode(f"{cfg.username}:{pw}".encode()).decode()
        if cfg.gzip:
            headers["Content-Encoding"] = "gzip"
        self._headers = headers
        self._conn: http.client.HTTPConnection | None = None
        self._exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="influx-v1")

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            if self._https:
                self._conn = http.client.HTTPSConnection(
                    self._host, self._port, timeout=self.cfg.timeout_s, context=ssl_context(self.cfg)
                )
            else:
                self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self.cfg.timeout_s)
        return self._conn

    def _post(self, lines: Sequence[str]) -> tuple[int, str]:
        body = "\n".join(lines).encode()
        if self.cfg.gzip:
            body = gzip.compress(body, 1)
        conn = self._connection()
        try:
            conn.request("POST", self._path, body=body, headers=self._headers)
            resp = conn.getresponse()
            text = resp.read().decode(errors="replace")
        except BaseException:
            conn.close()
            self._conn = None
            raise
        if resp.will_close:
            conn.close()
            self._conn = None
        return resp.status, text

    async def write(self, lines: Sequence[str]) -> None:
        try:
            status, text = await asyncio.get_running_loop().run_in_executor(self._exec, self._post, lines)
        except (OSError, http.client.HTTPException) as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc
        if not 200 <= status < 300:
            raise classify(status, text)

    async def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._exec.shutdown(wait=False)


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
                url=self.cfg.url,
                token=self.cfg.token.get() if self.cfg.token else "",
                org=self.cfg.org or "-",
                timeout=int(self.cfg.timeout_s * 1000),
                enable_gzip=self.cfg.gzip,
                **kw,
            )
        return self._client.write_api()  # type: ignore[attr-defined]

    async def write(self, lines: Sequence[str]) -> None:
        import aiohttp  # influxdb-client's async client runs on aiohttp
        from influxdb_client.domain.write_precision import WritePrecision
        from influxdb_client.rest import ApiException

        try:
            await self._get_api().write(  # type: ignore[attr-defined]
                bucket=self.cfg.bucket,
                org=self.cfg.org or "-",
                record="\n".join(lines),
                write_precision=WritePrecision.MS,
            )
        except ApiException as exc:
            body = exc.body.decode(errors="replace") if isinstance(exc.body, bytes) else str(exc.body or exc.reason)
            raise classify(int(exc.status or 0), body) from exc
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__) from exc

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()  # type: ignore[attr-defined]
            self._client = None


def make_writer(cfg: InfluxSection) -> Writer:
    return V1Writer(cfg) if cfg.api == "v1" else V2Writer(cfg)
