"""Tables of access control, on the scheduler's declarative ``Base`` (times: UTC epoch ms).

Self-contained: nothing here points at another package's tables, and no other table points here,
so these six tables can be created, migrated or dropped as one group.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Boolean, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from scheduler.models import Base


class Account(Base):
    """A person who signs in to the centre."""

    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    login: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str | None] = mapped_column(String(200))
    password_hash: Mapped[str] = mapped_column(String(300), doc="argon2id, PHC string")
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[int] = mapped_column()
    password_changed_at: Mapped[int] = mapped_column()
    last_login_at: Mapped[int | None] = mapped_column()

    roles: Mapped[list[AccountRole]] = relationship(
        back_populates="account", cascade="all, delete-orphan", order_by="AccountRole.id"
    )


class AccountRole(Base):
    """One role of an account, for some gateways (``areas``) or all (``areas`` null)."""

    __tablename__ = "account_roles"
    __table_args__ = (UniqueConstraint("account_id", "role"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(32))
    areas: Mapped[list[str] | None] = mapped_column(JSON, doc="gateway ids; null: every gateway")

    account: Mapped[Account] = relationship(back_populates="roles")


class WebSession(Base):
    """A browser session. The cookie holds a random secret; only its SHA-256 is stored here."""

    __tablename__ = "web_sessions"
    __table_args__ = (Index("ix_web_sessions_account", "account_id"),)

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    csrf_token: Mapped[str] = mapped_column(String(64), doc="synchroniser token for state-changing requests")
    created_at: Mapped[int] = mapped_column()
    expires_at: Mapped[int] = mapped_column(doc="absolute end of the session")
    last_seen_at: Mapped[int] = mapped_column(doc="idle expiry counts from here")
    address: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(300))


class ApiToken(Base):
    """A machine's credential: shown once when created, stored as its SHA-256, one role + areas."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16), doc="first characters, to recognise a token in a list")
    role: Mapped[str] = mapped_column(String(32))
    areas: Mapped[list[str] | None] = mapped_column(JSON)
    created_at: Mapped[int] = mapped_column()
    created_by: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[int | None] = mapped_column()
    revoked_at: Mapped[int | None] = mapped_column()
    last_used_at: Mapped[int | None] = mapped_column()


class LoginAttempt(Base):
    """Every password login, for throttling (per login and per address) and for the record."""

    __tablename__ = "login_attempts"
    __table_args__ = (
        Index("ix_login_attempts_login", "login", "at"),
        Index("ix_login_attempts_address", "address", "at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[int] = mapped_column()
    login: Mapped[str] = mapped_column(String(64))
    address: Mapped[str] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16), doc="ok | wrong | throttled")


class AuditEntry(Base):
    """One line of the audit log. ``hash`` = SHA-256 over ``prev_hash`` and the entry's canonical JSON;
    ``prev_hash`` is unique, so two writers can never both append after the same entry."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    at: Mapped[int] = mapped_column()
    actor: Mapped[str] = mapped_column(String(200))
    address: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(300))
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hash: Mapped[str] = mapped_column(String(64))
