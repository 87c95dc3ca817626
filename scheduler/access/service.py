"""The access service the HTTP side holds (``app.state.access``): authentication, login with
throttling, logout and audit, each running its database work on the scheduler's database thread
and its password hashing on a worker thread (argon2 must not hold up the event loop or the database).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

from protocol.signing import now_ms
from scheduler.access.media_urls import MediaUrlSigner
from scheduler.access.passwords import hash_password, needs_rehash, verify_password
from scheduler.access.principal import Principal
from scheduler.access.store import AccessError, AccessStore, NewSession
from scheduler.db import AsyncStore

HASHING_CONCURRENCY = 2


@dataclass(frozen=True)
class LoginRefused:
    reason: Literal["wrong", "throttled"]
    message: str
    retry_after_s: int = 0


class Access:
    def __init__(self, astore: AsyncStore, media_urls: MediaUrlSigner, *, secure_cookies: bool = False,
                 session_ttl_s: int = 12 * 3600, idle_s: int = 2 * 3600):
        self.astore = astore
        self.store = AccessStore(astore.store.session, session_ttl_ms=session_ttl_s * 1000, idle_ms=idle_s * 1000)
        self.media_urls = media_urls
        self.secure_cookies = secure_cookies
        #: At most this many password hashes at once: a login flood queues here, the API keeps running.
        self._hashing = asyncio.Semaphore(HASHING_CONCURRENCY)

    async def by_token(self, token: str) -> Principal | None:
        return await self.astore.call(self.store.token_principal, token, now_ms())

    async def by_session(self, secret: str) -> Principal | None:
        return await self.astore.call(self.store.session_principal, secret, now_ms())

    async def login(self, login: str, password: str, address: str, user_agent: str | None
                    ) -> NewSession | LoginRefused:
        login = login.strip().lower()
        check = await self.astore.call(self.store.login_check, login, address, now_ms())
        if check.throttled is not None:
            who = f"account {login!r}" if check.throttled == "login" else f"address {address}"
            return LoginRefused("throttled", f"too many failed logins for {who}; this login was not checked. "
                                             f"Try again in {check.retry_after_s} s.", check.retry_after_s)
        async with self._hashing:
            ok = await asyncio.to_thread(verify_password, check.password_hash, password)
        if not ok:
            await self.astore.call(self.store.login_failed, check.attempt_id, login, address, now_ms())
            return LoginRefused("wrong", "wrong login or password")
        assert check.password_hash is not None
        new_hash = None
        if needs_rehash(check.password_hash):
            async with self._hashing:
                new_hash = await asyncio.to_thread(hash_password, password)
        try:
            return await self.astore.call(self.store.login_ok, check.attempt_id, login, address, now_ms(),
                                          user_agent=user_agent, new_hash=new_hash)
        except AccessError:  # disabled between the check and now
            return LoginRefused("wrong", "wrong login or password")

    async def logout(self, p: Principal, address: str | None) -> None:
        if p.session_hash is not None:
            await self.astore.call(self.store.logout, p.session_hash, actor=p.name, address=address, now=now_ms())

    async def audit(self, actor: Principal | str, action: str, *, address: str | None = None,
                    target: str | None = None, detail: dict[str, Any] | None = None) -> None:
        name = actor if isinstance(actor, str) else actor.name
        await self.astore.call(self.store.audit, at=now_ms(), actor=name, action=action, address=address,
                               target=target, detail=detail)
