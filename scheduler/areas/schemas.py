"""What the groups API accepts (pydantic at the boundary; the store checks the speakers)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from protocol.ids import ID_PATTERN

#: A group is a thôn/ấp's speakers: a few to a few dozen. The limits bound one request and one row.
MAX_MEMBERS = 500
MAX_GROUPS_PER_COMMUNE = 200


class GroupIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200, description='what staff call it, e.g. "Thôn Đông"')
    speakers: list[str] = Field(
        max_length=MAX_MEMBERS,
        description='the commune\'s speakers: "DEVICE" or "GATEWAY/DEVICE" (at least one, at most 500)',
    )


class GroupCreate(GroupIn):
    gateway: str = Field(pattern=ID_PATTERN, description="the commune's gateway id")
    id: str = Field(pattern=ID_PATTERN, description="short id used in targets: GATEWAY/@ID (a-z, 0-9, -)")
