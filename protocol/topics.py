"""Topic names of contract v1: builders and a strict parser."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from protocol.errors import TopicError
from protocol.ids import validate_id

ROOT = "loaxa/v1"

GatewayTopicKind = Literal["status", "health", "cmd", "ack", "event"]
#: ``ack`` and ``event`` (device → gateway) carry a device's answer to a ``cmd`` and its playback
#: reports with the device's own timestamps; see docs/broadcast.md.
#: ``receipt`` (gateway → device) tells a sensor which of its telemetry readings are on the gateway's
#: disk (docs/protocol.md, "Telemetry receipts").
DeviceTopicKind = Literal["state", "cmd", "telemetry", "ack", "event", "receipt"]
GATEWAY_KINDS: frozenset[str] = frozenset({"status", "health", "cmd", "ack", "event"})
DEVICE_KINDS: frozenset[str] = frozenset({"state", "cmd", "telemetry", "ack", "event", "receipt"})


def gateway_topic(gw: str, kind: GatewayTopicKind) -> str:
    """``loaxa/v1/{gw}/{kind}``."""
    if kind not in GATEWAY_KINDS:
        raise TopicError(f"unknown gateway topic kind {kind!r}")
    return f"{ROOT}/{validate_id(gw, 'gateway id')}/{kind}"


def device_topic(gw: str, dev: str, kind: DeviceTopicKind) -> str:
    """``loaxa/v1/{gw}/dev/{dev}/{kind}``."""
    if kind not in DEVICE_KINDS:
        raise TopicError(f"unknown device topic kind {kind!r}")
    return f"{ROOT}/{validate_id(gw, 'gateway id')}/dev/{validate_id(dev, 'device id')}/{kind}"


def status_topic(gw: str) -> str:
    return gateway_topic(gw, "status")


def health_topic(gw: str) -> str:
    return gateway_topic(gw, "health")


def cmd_topic(gw: str) -> str:
    return gateway_topic(gw, "cmd")


def ack_topic(gw: str) -> str:
    return gateway_topic(gw, "ack")


def event_topic(gw: str) -> str:
    return gateway_topic(gw, "event")


def filter_all_gateways(kind: GatewayTopicKind) -> str:
    """Subscription filter for one kind of gateway topic across all gateways, e.g. ``loaxa/v1/+/ack``."""
    if kind not in GATEWAY_KINDS:
        raise TopicError(f"unknown gateway topic kind {kind!r}")
    return f"{ROOT}/+/{kind}"


def filter_devices(gw: str, kind: DeviceTopicKind) -> str:
    """Subscription filter for one kind of device topic under one gateway, e.g. ``…/{gw}/dev/+/state``."""
    if kind not in DEVICE_KINDS:
        raise TopicError(f"unknown device topic kind {kind!r}")
    return f"{ROOT}/{validate_id(gw, 'gateway id')}/dev/+/{kind}"


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    gateway: str
    kind: str
    device: str | None = None


def parse_topic(topic: str) -> ParsedTopic:
    """Split a contract topic into its parts; raise :class:`TopicError` for anything else."""
    parts = topic.split("/")
    if len(parts) < 4 or parts[0] != "loaxa" or parts[1] != "v1":
        raise TopicError(f"topic {topic!r} is not under {ROOT}/")
    gw = validate_id(parts[2], "gateway id")
    if len(parts) == 4 and parts[3] in GATEWAY_KINDS:
        return ParsedTopic(gateway=gw, kind=parts[3])
    if len(parts) == 6 and parts[3] == "dev" and parts[5] in DEVICE_KINDS:
        return ParsedTopic(gateway=gw, kind=parts[5], device=validate_id(parts[4], "device id"))
    raise TopicError(f"topic {topic!r} is not a contract v1 topic")
