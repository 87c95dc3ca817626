"""Reads and writes of the access tables (synchronous; the server runs them on the database thread,
the CLI calls them directly). Every change is written to the audit log in the same transaction.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, ParamSpec, TypeVar

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, selectinload

from scheduler.access import audit
from scheduler.access.audit import VerifyResult
from scheduler.access.models import Account, AccountRole, ApiToken, AuditEntry, LoginAttempt, WebSession
from scheduler.access.permissions import Grant, GrantError
from scheduler.access.principal import Principal
from scheduler.access.tokens import MAX_CREDENTIAL_LENGTH, display_prefix, new_secret, new_token, token_hash

P = ParamSpec("P")
T = TypeVar("T")

LOGIN_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
_LOGIN_RE = re.compile(LOGIN_PATTERN)
TOKEN_NAME_PATTERN = LOGIN_PATTERN

#: Throttling: the Nth wrong password within the window is refused without being checked.
THROTTLE_WINDOW_MS = 60_000
MAX_FAILURES_PER_LOGIN = 5
MAX_FAILURES_PER_ADDRESS = 20
#: Keep login attempts this long (they are the evidence for the throttle, not the audit record).
ATTEMPT_RETENTION_MS = 24 * 3600 * 1000
#: ``last_seen_at`` / ``last_used_at`` are written at most this often (one write per minute, not per request).
TOUCH_EVERY_MS = 60_000
#: Retries of a transaction that lost a race to append to the audit log.
RETRIES = 5


class AccessError(ValueError):
    """The change cannot be made as asked (the message says why)."""


class UnknownName(AccessError):
    """No such account or token."""


def check_login(login: str, what: str = "login") -> str:
    if not _LOGIN_RE.match(login):
        raise AccessError(f"{what} {login!r}: use 1-64 lowercase letters, digits, '.', '_' or '-'")
    return login


def _grants(roles: Iterable[tuple[str, list[str] | None]]) -> tuple[Grant, ...]:
    out = []
    for role, areas in roles:
        try:
            out.append(Grant.make(role, areas))
        except GrantError:
            continue  # a role removed from the code no longer grants anything
    return tuple(out)


def _areas(g: Grant) -> list[str] | None:
    return None if g.areas is None else sorted(g.areas)


@dataclass(frozen=True)
class LoginCheck:
    """Step 1 of a login: throttled, or the stored hash to verify (None: no such enabled account)."""

    attempt_id: int
    throttled: Literal["login", "address"] | None
    retry_after_s: int
    password_hash: str | None


@dataclass(frozen=True)
class NewSession:
    secret: str
    csrf_token: str
    expires_at: int
    principal: Principal


class AccessStore:
    def __init__(self, session: Callable[[], Session], *, session_ttl_ms: int = 12 * 3600 * 1000,
                 idle_ms: int = 2 * 3600 * 1000):
        self._session = session
        self.session_ttl_ms = session_ttl_ms
        self.idle_ms = idle_ms

    def _write(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn`` in a transaction, again when it lost a race (another writer appended to the audit log)."""
        for attempt in range(RETRIES):
            try:
                with self._session() as s, s.begin():
                    audit.lock_chain(s)
                    return fn(s)
            except (IntegrityError, OperationalError) as exc:
                if attempt == RETRIES - 1 or not _is_race(exc):
                    raise
        raise AssertionError("unreachable")

    # ------------------------------------------------------------ audit

    def audit(self, *, at: int, actor: str, action: str, address: str | None = None, target: str | None = None,
              detail: dict[str, Any] | None = None) -> int:
        return self._write(lambda s: audit.append(s, at=at, actor=actor, action=action, address=address,
                                                  target=target, detail=detail).id)

    def audit_entries(self, *, limit: int = 100, before: int | None = None, action: str | None = None,
                      actor: str | None = None) -> list[dict[str, Any]]:
        with self._session() as s:
            q = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
            if before is not None:
                q = q.where(AuditEntry.id < before)
            if action:
                q = q.where(AuditEntry.action.startswith(action))
            if actor:
                q = q.where(AuditEntry.actor == actor)
            return [audit.entry_dict(e) for e in s.scalars(q).all()]

    def verify_audit(self) -> VerifyResult:
        with self._session() as s:
            return audit.verify(audit.iter_entries(s))

    def export_audit(self) -> Iterator[str]:
        with self._session() as s:
            yield from audit.to_csv(audit.iter_entries(s))

    # ------------------------------------------------------------ accounts

    def has_accounts(self) -> bool:
        with self._session() as s:
            return s.scalar(select(func.count()).select_from(Account).where(Account.disabled.is_(False))) != 0

    def add_account(self, login: str, password_hash: str, grants: list[Grant], *, display_name: str | None,
                    actor: str, address: str | None, now: int) -> None:
        check_login(login)
        if not grants:
            raise AccessError("give the account at least one role")

        def tx(s: Session) -> None:
            if s.scalar(select(Account.id).where(Account.login == login)) is not None:
                raise AccessError(f"account {login} already exists")
            acc = Account(login=login, display_name=display_name, password_hash=password_hash, disabled=False,
                          created_at=now, password_changed_at=now)
            acc.roles = [AccountRole(role=g.role, areas=_areas(g)) for g in _merge(grants)]
            s.add(acc)
            audit.append(s, at=now, actor=actor, address=address, action="account.create", target=login,
                         detail={"roles": [g.to_json() for g in grants], "display_name": display_name})

        self._write(tx)

    def _account(self, s: Session, login: str) -> Account:
        acc = s.scalars(select(Account).where(Account.login == login).options(selectinload(Account.roles))).first()
        if acc is None:
            raise UnknownName(f"no account {login}")
        return acc

    def list_accounts(self) -> list[dict[str, Any]]:
        with self._session() as s:
            rows = s.scalars(select(Account).options(selectinload(Account.roles)).order_by(Account.login)).all()
            return [
                {"login": a.login, "display_name": a.display_name, "disabled": a.disabled,
                 "roles": [Grant.make(r.role, r.areas).to_json() for r in a.roles if r.role],
                 "created_at": a.created_at, "last_login_at": a.last_login_at}
                for a in rows
            ]

    def set_password(self, login: str, password_hash: str, *, actor: str, address: str | None, now: int,
                     keep_session: str | None = None) -> int:
        """Replace the password; every session of the account ends (but ``keep_session``, the hash of
        the session that changed it). Returns how many ended."""

        def tx(s: Session) -> int:
            acc = self._account(s, login)
            acc.password_hash = password_hash
            acc.password_changed_at = now
            n = _ended_sessions(s, acc.id, keep_session)
            audit.append(s, at=now, actor=actor, address=address, action="account.password", target=login,
                         detail={"sessions_ended": n})
            return int(n)

        return self._write(tx)

    def set_disabled(self, login: str, disabled: bool, *, actor: str, address: str | None, now: int) -> None:
        def tx(s: Session) -> None:
            acc = self._account(s, login)
            acc.disabled = disabled
            n = 0
            if disabled:
                n = _ended_sessions(s, acc.id)
            audit.append(s, at=now, actor=actor, address=address,
                         action="account.disable" if disabled else "account.enable", target=login,
                         detail={"sessions_ended": n})

        self._write(tx)

    def set_roles(self, login: str, grants: list[Grant], *, actor: str, address: str | None, now: int) -> None:
        def tx(s: Session) -> None:
            acc = self._account(s, login)
            before = [Grant.make(r.role, r.areas).to_json() for r in acc.roles]
            acc.roles.clear()
            s.flush()
            acc.roles.extend(AccountRole(role=g.role, areas=_areas(g)) for g in _merge(grants))
            audit.append(s, at=now, actor=actor, address=address, action="account.roles", target=login,
                         detail={"before": before, "after": [g.to_json() for g in grants]})

        self._write(tx)

    # ------------------------------------------------------------ login and sessions

    def login_check(self, login: str, address: str, now: int) -> LoginCheck:
        """Record the attempt (as pending) and tell whether it may be checked at all."""
        login = login[:64]

        def tx(s: Session) -> LoginCheck:
            since = now - THROTTLE_WINDOW_MS
            s.execute(delete(LoginAttempt).where(LoginAttempt.at < now - ATTEMPT_RETENTION_MS))
            failing = LoginAttempt.outcome.in_(("wrong", "pending"))
            throttled: Literal["login", "address"] | None = None
            first: int | None = None
            for who, col, limit in (("login", LoginAttempt.login, MAX_FAILURES_PER_LOGIN),
                                    ("address", LoginAttempt.address, MAX_FAILURES_PER_ADDRESS)):
                value = login if who == "login" else address
                ats = s.scalars(select(LoginAttempt.at).where(col == value, LoginAttempt.at > since, failing)
                                .order_by(LoginAttempt.at.desc()).limit(limit)).all()
                if len(ats) >= limit:
                    throttled, first = ("login" if who == "login" else "address"), ats[-1]
                    break
            # one audit entry per lock-out, not one per refused try: a flood must not fill the log
            already = throttled and s.scalar(select(LoginAttempt.id).where(
                LoginAttempt.login == login, LoginAttempt.address == address[:64],
                LoginAttempt.outcome == "throttled", LoginAttempt.at > since).limit(1))
            attempt = LoginAttempt(at=now, login=login, address=address[:64],
                                   outcome="throttled" if throttled else "pending")
            s.add(attempt)
            s.flush()
            if throttled:
                if not already:
                    audit.append(s, at=now, actor=login, address=address, action="login.throttled", target=login,
                                 detail={"by": throttled})
                retry = max(1, (first or now) + THROTTLE_WINDOW_MS - now + 999) // 1000
                return LoginCheck(attempt.id, throttled, int(retry), None)
            acc = s.scalars(select(Account).where(Account.login == login, Account.disabled.is_(False))).first()
            return LoginCheck(attempt.id, None, 0, acc.password_hash if acc else None)

        return self._write(tx)

    def login_failed(self, attempt_id: int, login: str, address: str, now: int) -> None:
        def tx(s: Session) -> None:
            s.execute(update(LoginAttempt).where(LoginAttempt.id == attempt_id).values(outcome="wrong"))
            audit.append(s, at=now, actor=login[:64], address=address, action="login.failed", target=login[:64])

        self._write(tx)

    def login_ok(self, attempt_id: int, login: str, address: str, now: int, *, user_agent: str | None,
                 new_hash: str | None) -> NewSession:
        """The password was right: start a session (and store the upgraded hash, if any)."""

        def tx(s: Session) -> NewSession:
            s.execute(update(LoginAttempt).where(LoginAttempt.id == attempt_id).values(outcome="ok"))
            acc = self._account(s, login)
            if acc.disabled:
                raise AccessError("this account is disabled")
            if new_hash is not None:
                acc.password_hash = new_hash
            acc.last_login_at = now
            secret, csrf = new_secret(), new_secret()
            ws = WebSession(id_hash=token_hash(secret), account_id=acc.id, csrf_token=csrf, created_at=now,
                            expires_at=now + self.session_ttl_ms, last_seen_at=now, address=address[:64],
                            user_agent=(user_agent or "")[:300] or None)
            s.add(ws)
            s.execute(delete(WebSession).where(WebSession.expires_at < now))
            audit.append(s, at=now, actor=login, address=address, action="login", target=login,
                         detail={"rehashed": new_hash is not None})
            p = Principal(acc.login, "account", _grants((r.role, r.areas) for r in acc.roles), via="session",
                          csrf_token=csrf, session_hash=ws.id_hash, display_name=acc.display_name)
            return NewSession(secret, csrf, ws.expires_at, p)

        return self._write(tx)

    def session_principal(self, secret: str, now: int) -> Principal | None:
        if not secret or len(secret) > MAX_CREDENTIAL_LENGTH:
            return None
        h = token_hash(secret)
        with self._session() as s:
            ws = s.get(WebSession, h)
            if ws is None or ws.expires_at <= now or ws.last_seen_at + self.idle_ms <= now:
                return None
            acc = s.get(Account, ws.account_id, options=[selectinload(Account.roles)])
            if acc is None or acc.disabled:
                return None
            stale = ws.last_seen_at + TOUCH_EVERY_MS <= now
            p = Principal(acc.login, "account", _grants((r.role, r.areas) for r in acc.roles), via="session",
                          csrf_token=ws.csrf_token, session_hash=h, display_name=acc.display_name)
        if stale:
            self._write(lambda s2: s2.execute(update(WebSession).where(WebSession.id_hash == h)
                                              .values(last_seen_at=now)))
        return p

    def logout(self, session_hash: str, *, actor: str, address: str | None, now: int) -> None:
        def tx(s: Session) -> None:
            s.execute(delete(WebSession).where(WebSession.id_hash == session_hash))
            audit.append(s, at=now, actor=actor, address=address, action="logout", target=actor)

        self._write(tx)

    # ------------------------------------------------------------ API tokens

    def create_token(self, name: str, grant: Grant, *, expires_at: int | None, actor: str, address: str | None,
                     now: int) -> str:
        """Store a new token (hashed); returns the token itself, which is never shown again."""
        check_login(name, "token name")
        token = new_token()

        def tx(s: Session) -> None:
            if s.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
                raise AccessError(f"a token named {name} already exists (revoke it, or choose another name)")
            s.add(ApiToken(name=name, token_hash=token_hash(token), prefix=display_prefix(token), role=grant.role,
                           areas=_areas(grant), created_at=now, created_by=actor, expires_at=expires_at))
            audit.append(s, at=now, actor=actor, address=address, action="token.create", target=name,
                         detail={**grant.to_json(), "expires_at": expires_at})

        self._write(tx)
        return token

    def import_token(self, name: str, token: str, grant: Grant, *, actor: str, now: int) -> None:
        """Store a token chosen elsewhere (the demo writes its tokens into its endpoints file)."""
        check_login(name, "token name")

        def tx(s: Session) -> None:
            s.add(ApiToken(name=name, token_hash=token_hash(token), prefix=display_prefix(token), role=grant.role,
                           areas=_areas(grant), created_at=now, created_by=actor, expires_at=None))
            audit.append(s, at=now, actor=actor, action="token.create", target=name, detail=grant.to_json())

        self._write(tx)

    def list_tokens(self) -> list[dict[str, Any]]:
        with self._session() as s:
            return [
                {"name": t.name, "prefix": t.prefix, **Grant.make(t.role, t.areas).to_json(),
                 "created_at": t.created_at, "created_by": t.created_by, "expires_at": t.expires_at,
                 "revoked_at": t.revoked_at, "last_used_at": t.last_used_at}
                for t in s.scalars(select(ApiToken).order_by(ApiToken.name)).all()
            ]

    def revoke_token(self, name: str, *, actor: str, address: str | None, now: int) -> None:
        def tx(s: Session) -> None:
            t = s.scalars(select(ApiToken).where(ApiToken.name == name)).first()
            if t is None:
                raise UnknownName(f"no token {name}")
            if t.revoked_at is None:
                t.revoked_at = now
            audit.append(s, at=now, actor=actor, address=address, action="token.revoke", target=name)

        self._write(tx)

    def token_principal(self, token: str, now: int) -> Principal | None:
        if not token or len(token) > MAX_CREDENTIAL_LENGTH:
            return None
        h = token_hash(token)
        with self._session() as s:
            t = s.scalars(select(ApiToken).where(ApiToken.token_hash == h)).first()
            if t is None or t.revoked_at is not None or (t.expires_at is not None and t.expires_at <= now):
                return None
            stale = t.last_used_at is None or t.last_used_at + TOUCH_EVERY_MS <= now
            p = Principal(f"token:{t.name}", "token", _grants([(t.role, t.areas)]), via="token")
        if stale:
            self._write(lambda s2: s2.execute(update(ApiToken).where(ApiToken.token_hash == h)
                                              .values(last_used_at=now)))
        return p


def _merge(grants: list[Grant]) -> list[Grant]:
    """One grant per role: areas of the same role are joined (all areas wins)."""
    by_role: dict[str, frozenset[str] | None] = {}
    for g in grants:
        if g.role in by_role:
            have = by_role[g.role]
            by_role[g.role] = None if have is None or g.areas is None else have | g.areas
        else:
            by_role[g.role] = g.areas
    return [Grant(r, a) for r, a in by_role.items()]


def _ended_sessions(s: Session, account_id: int, keep: str | None = None) -> int:
    which = [WebSession.account_id == account_id]
    if keep is not None:
        which.append(WebSession.id_hash != keep)
    n = s.scalar(select(func.count()).select_from(WebSession).where(*which)) or 0
    s.execute(delete(WebSession).where(*which))
    return int(n)


def _is_race(exc: Exception) -> bool:
    text = str(exc).lower()
    if isinstance(exc, IntegrityError):
        return "prev_hash" in text or "audit_log" in text
    return "locked" in text or "busy" in text or "could not serialize" in text
