"""A small async InfluxQL client: ``GET /query`` over httpx, answers decoded into series.

InfluxDB 1.x, 2.x (its v1 compatibility API) and 3.x all serve ``/query`` with the same JSON
answer (``{"results": [{"statement_id", "series": [{"name", "tags", "columns", "values"}]}]}``).
Authentication is HTTP Basic (1.x users; 2.x accepts any user name with the token as password) or
``Authorization: Token …`` (2.x and 3.x tokens). Times are asked for as epoch nanoseconds
(``epoch=ns``) so that paging is exact whatever precision the points were written with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx

from scheduler.ioc.settings import IocSettings

#: Statements up to this length go in a GET (what every version documents for read queries).
GET_MAX_QUERY = 6000


class InfluxError(Exception):
    """InfluxDB could not be asked or answered with an error; the message says which."""


@dataclass
class Series:
    name: str
    tags: dict[str, str]
    columns: list[str]
    values: list[list[Any]]


@dataclass
class Result:
    series: list[Series] = field(default_factory=list)


def _decode(body: Any, statements: int) -> list[Result]:
    if not isinstance(body, dict) or not isinstance(body.get("results"), list):
        raise InfluxError(f"unexpected answer from InfluxDB: {str(body)[:200]}")
    if "error" in body:
        raise InfluxError(f"InfluxDB: {body['error']}")
    out: list[Result] = []
    for res in body["results"]:
        if res.get("error"):
            raise InfluxError(f"InfluxDB refused the query: {res['error']}")
        series = [
            Series(
                name=str(s.get("name", "")),
                tags={str(k): str(v) for k, v in (s.get("tags") or {}).items()},
                columns=[str(c) for c in s.get("columns", [])],
                values=list(s.get("values") or []),
            )
            for s in res.get("series") or []
        ]
        out.append(Result(series))
    if len(out) != statements:
        # We never send more statements than we built; an answer with a different count means the
        # server parsed the request differently from what we meant. Refuse to use it.
        raise InfluxError(f"InfluxDB answered {len(out)} results for {statements} statement(s)")
    return out


class InfluxQLClient:
    """One pooled HTTP client per event loop; ``query`` takes statements this package built."""

    def __init__(self, settings: IocSettings):
        self.settings = settings
        self._client: httpx.AsyncClient | None = None
        self.queries = 0
        self.errors = 0

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            auth: httpx.BasicAuth | None = None
            headers = {"Accept": "application/json"}
            if self.settings.token:
                headers["Authorization"] = f"Token {self.settings.token}"
            elif self.settings.username is not None:
                auth = httpx.BasicAuth(self.settings.username, self.settings.password or "")
            self._client = httpx.AsyncClient(
                base_url=self.settings.url.rstrip("/"),
                auth=auth,
                headers=headers,
                timeout=self.settings.timeout_s,
                limits=httpx.Limits(max_connections=8, max_keepalive_connections=8),
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def query(self, statements: list[str]) -> list[Result]:
        """Run the statements (joined with ``;`` in one request) and return one Result each.

        Every statement was built by scheduler/ioc/influxql.py; nothing here adds text to them.
        """
        if not statements:
            return []
        q = ";\n".join(statements)
        data = {"q": q, "db": self.settings.database, "epoch": "ns"}
        self.queries += 1
        try:
            return await self._query(statements, data)
        except InfluxError:
            self.errors += 1
            raise

    async def _query(self, statements: list[str], data: dict[str, str]) -> list[Result]:
        q = data["q"]
        try:
            if len(q) <= GET_MAX_QUERY:
                r = await self._http().get("/query", params=data)
            else:  # a long area filter: 1.x, 2.9+ and 3.x take the same form as a POST body
                r = await self._http().post("/query", data=data)
        except httpx.HTTPError as exc:
            raise InfluxError(f"InfluxDB at {self.settings.url} did not answer: {exc!r}") from exc
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code != 200:
            detail = body.get("error") if isinstance(body, dict) else r.text[:200]
            raise InfluxError(f"InfluxDB answered HTTP {r.status_code}: {detail}")
        return _decode(body, len(statements))
