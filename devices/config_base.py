"""What every device entry of the gateway YAML has in common (kept apart so driver packages can
define their own config classes without importing ``devices.config``, which imports them)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from loaxa.yamlconf import StrictModel
from protocol.ids import DeviceId

MeasurementName = Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]{0,63}$")]


class DeviceBase(StrictModel):
    id: DeviceId
    name: str | None = Field(default=None, max_length=200, description="human name, e.g. 'Loa chợ'")
