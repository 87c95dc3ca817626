"""Request and response shapes of the access API."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from scheduler.access.passwords import MAX_LENGTH, MIN_LENGTH
from scheduler.access.store import LOGIN_PATTERN, TOKEN_NAME_PATTERN

AreasIn = list[str] | Literal["*"]


class LoginIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    login: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


class RoleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str = Field(max_length=32)
    areas: AreasIn = Field(default="*", description='gateway ids, or "*" for every gateway')


class AccountIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    login: str = Field(pattern=LOGIN_PATTERN)
    password: str = Field(min_length=MIN_LENGTH, max_length=MAX_LENGTH)
    display_name: str | None = Field(default=None, max_length=200)
    roles: list[RoleIn] = Field(min_length=1, max_length=10)


class RolesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    roles: list[RoleIn] = Field(min_length=1, max_length=10)


class PasswordIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    current_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=MIN_LENGTH, max_length=MAX_LENGTH)


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=TOKEN_NAME_PATTERN)
    role: str = Field(max_length=32)
    areas: AreasIn = "*"
    expires_days: int | None = Field(default=None, ge=1, le=3650, description="null: until revoked")


class SessionOut(BaseModel):
    login: str
    display_name: str | None
    csrf_token: str | None
    expires_at: int | None
    permissions: dict[str, list[str] | str]
