"""The ``broadcast:`` section of the gateway config (all optional; defaults suit a commune)."""

from __future__ import annotations

from pydantic import Field

from loaxa.yamlconf import StrictModel


class BroadcastSection(StrictModel):
    now_lead_ms: int = Field(default=400, ge=50, le=10_000, description=(
        "a 'now' broadcast starts this long after the gateway accepts it, so that every speaker has the "
        "command before the common start time"))
    dispatch_ahead_ms: int = Field(default=3000, ge=100, le=600_000, description=(
        "a scheduled broadcast is sent to the speakers this long before its start"))
    late_max_s: float = Field(default=60, ge=0, le=86_400, description=(
        "after a gateway outage, a broadcast whose start passed less than this long ago still plays "
        "(late); older ones are reported skipped (missed_start)"))
    now_media_wait_s: float = Field(default=120, ge=1, le=3600, description=(
        "how long a 'now' broadcast waits for its media before it is reported failed"))
    media_retry_max_s: float = Field(default=300, ge=0.5, le=3600, description=(
        "media that cannot be fetched is tried again until the broadcast's start, the pause doubling "
        "from 5 s up to this long; only then is the broadcast reported failed (media_unavailable)"))
    report_grace_s: float = Field(default=15, ge=1, le=600, description=(
        "a speaker that has not reported the end this long after the planned end is reported failed"))
    ack_timeout_s: float = Field(default=1.0, gt=0, le=60, description="IP speaker ack timeout per try")
    retries: int = Field(default=3, ge=0, le=20, description="IP speaker command retries after a timeout")
    media_listen: str | None = Field(default=None, pattern=r"^[^:\s]*:\d{1,5}$", description=(
        "serve the media cache to the speakers on this host:port (e.g. 0.0.0.0:8091); speakers then "
        "fetch from the gateway, not over the uplink"))
    media_public_url: str | None = Field(default=None, pattern=r"^https?://", description=(
        "how speakers reach media_listen, e.g. http://192.168.1.2:8091"))
