"""IOC read API settings, taken from the scheduler config's ``influx:`` section."""

from __future__ import annotations

from dataclasses import dataclass

from scheduler.config import IocInfluxSection


class IocSetupError(Exception):
    """The ``influx:`` section cannot be used as written (the message names the key)."""


@dataclass(frozen=True)
class IocSettings:
    url: str
    database: str
    username: str | None = None
    password: str | None = None
    token: str | None = None
    timeout_s: float = 10.0
    #: Longest ``to - from`` one request may ask for.
    max_range_ms: int = 31 * 86_400_000
    #: Most points in one page (``limit`` may not be larger).
    max_points: int = 50_000
    #: ``limit`` when the request gives none.
    default_limit: int = 5_000
    #: Most buckets ``(to - from) / every`` one aggregated request may span.
    max_buckets: int = 100_000
    #: Schema (measurements, field keys) is cached this long.
    schema_ttl_s: float = 60.0

    @classmethod
    def from_section(cls, section: IocInfluxSection) -> IocSettings:
        if section.token is not None and (section.username is not None or section.password is not None):
            raise IocSetupError("influx: give either token or username/password, not both")
        try:
            password = section.password.get() if section.password is not None else None
        except RuntimeError as exc:
            raise IocSetupError(f"influx.password: {exc}") from exc
        try:
            token = section.token.get().strip() if section.token is not None else None
        except RuntimeError as exc:
            raise IocSetupError(f"influx.token: {exc}") from exc
        return cls(
            url=section.url,
            database=section.database,
            username=section.username,
            password=password,
            token=token,
            timeout_s=section.timeout_s,
            max_range_ms=section.max_range_days * 86_400_000,
            max_points=section.max_points,
            default_limit=min(5_000, section.max_points),
        )
