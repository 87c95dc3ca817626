"""Gateway and device identifiers: the commune's administrative code or a slug ``[a-z0-9-]{1,64}``."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import StringConstraints

from protocol.errors import TopicError

ID_PATTERN = r"^[a-z0-9-]{1,64}$"
_ID_RE = re.compile(ID_PATTERN)

#: A gateway or device id, for use as a pydantic field type.
DeviceId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
GatewayId = DeviceId

#: Command and broadcast ids are a little freer (they may come from UUIDs or ULIDs).
MESSAGE_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
MessageId = Annotated[str, StringConstraints(pattern=MESSAGE_ID_PATTERN)]


def is_valid_id(value: str) -> bool:
    """True when ``value`` is a valid gateway/device id."""
    return bool(_ID_RE.fullmatch(value))


def validate_id(value: str, what: str = "id") -> str:
    """Return ``value`` unchanged, or raise :class:`TopicError` naming what was wrong."""
    if not isinstance(value, str) or not _ID_RE.fullmatch(value):
        raise TopicError(f"invalid {what} {value!r}: must match [a-z0-9-]{{1,64}}")
    return value
