"""How a component reaches an MQTT broker: one config model, shared by the gateway and the scheduler."""

from __future__ import annotations

import ssl
import urllib.parse
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from loaxa.yamlconf import Secret, StrictModel


class MqttEndpoint(StrictModel):
    """``url`` is ``mqtt://host:port`` (plain) or ``mqtts://host:port`` (TLS)."""

    url: str = Field(description="mqtt://host:1883 or mqtts://host:8883")
    username: str | None = None
    password: Secret | None = None
    client_id: str | None = Field(default=None, max_length=128)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    reconnect_max_s: float = Field(
        default=10.0, ge=0.5, le=300,
        description="longest wait between reconnect attempts (exponential backoff with jitter up to this)",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        u = urllib.parse.urlsplit(v)
        if u.scheme not in ("mqtt", "mqtts") or not u.hostname:
            raise ValueError("must look like mqtt://host:1883 or mqtts://host:8883")
        try:
            _ = u.port
        except ValueError as exc:
            raise ValueError(f"bad port: {exc}") from exc
        return v

    @property
    def host(self) -> str:
        return urllib.parse.urlsplit(self.url).hostname or "localhost"

    @property
    def tls(self) -> bool:
        return urllib.parse.urlsplit(self.url).scheme == "mqtts"

    @property
    def port(self) -> int:
        return urllib.parse.urlsplit(self.url).port or (8883 if self.tls else 1883)

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.cert_file:
            ctx.load_cert_chain(str(self.cert_file), str(self.key_file) if self.key_file else None)
        return ctx

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``aiomqtt.Client`` (MQTT 5)."""
        import paho.mqtt.client as paho

        kw: dict[str, Any] = {
            "hostname": self.host,
            "port": self.port,
            "username": self.username,
            "password": self.password.get() if self.password else None,
            "keepalive": self.keepalive_s,
            "protocol": paho.MQTTv5,
        }
        if self.client_id:
            kw["identifier"] = self.client_id
        ctx = self.tls_context()
        if ctx is not None:
            kw["tls_context"] = ctx
        return kw
