"""Delivery of one notification: e-mail over SMTP (stdlib smtplib on a worker thread) and the
signed webhook POST (httpx). Each raises :class:`SendError` with a short reason on failure; the
notifier retries with backoff (scheduler/fleet/notify/service.py).

Webhook signature: ``X-Loaxa-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`` with
``X-Loaxa-Timestamp: <unix seconds>``. The receiver recomputes it over the raw body, compares in
constant time and refuses a timestamp more than a few minutes old (a replayed request).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import smtplib
import ssl
import time
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import httpx

from scheduler.fleet.config import SmtpSection, Webhook

SIGNATURE_HEADER = "X-Loaxa-Signature"
TIMESTAMP_HEADER = "X-Loaxa-Timestamp"


class SendError(Exception):
    """Could not deliver (the message says why); ``permanent`` means retrying will not help."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


def verify(secret: str, timestamp: str, body: bytes, signature: str, *, max_age_s: int = 300,
           now: float | None = None) -> bool:
    """What a receiver does (kept here so the docs and the tests use the same rule)."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > max_age_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


async def post_webhook(hook: Webhook, body: str, client: httpx.AsyncClient) -> None:
    data = body.encode("utf-8")
    ts = int(time.time())
    headers = {"Content-Type": "application/json; charset=utf-8", TIMESTAMP_HEADER: str(ts),
               SIGNATURE_HEADER: sign(hook.secret.get(), ts, data), "User-Agent": "loaxa-scheduler"}
    try:
        resp = await client.post(hook.url, content=data, headers=headers, timeout=hook.timeout_s)
    except httpx.HTTPError as exc:
        raise SendError(f"webhook {hook.name}: {type(exc).__name__}: {exc}"[:300]) from exc
    if resp.status_code >= 300:
        # 4xx other than 408/429 will not get better by itself, but the receiver may be fixed: keep trying
        raise SendError(f"webhook {hook.name}: HTTP {resp.status_code} {resp.text[:200]}")


def _send_mail(cfg: SmtpSection, to: str, subject: str, text: str) -> None:
    msg = EmailMessage()
    msg["From"] = cfg.sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain="loaxa")
    msg.set_content(text, charset="utf-8")
    smtp: smtplib.SMTP
    if cfg.security == "tls":
        smtp = smtplib.SMTP_SSL(cfg.host, cfg.port, timeout=cfg.timeout_s, context=ssl.create_default_context())
    else:
        smtp = smtplib.SMTP(cfg.host, cfg.port, timeout=cfg.timeout_s)
    with smtp:
        if cfg.security == "starttls":
            smtp.starttls(context=ssl.create_default_context())
        if cfg.username:
            smtp.login(cfg.username, cfg.password.get() if cfg.password else "")
        smtp.send_message(msg)


async def send_mail(cfg: SmtpSection, to: str, subject: str, text: str) -> None:
    try:
        await asyncio.to_thread(_send_mail, cfg, to, subject, text)
    except smtplib.SMTPRecipientsRefused as exc:
        raise SendError(f"SMTP {cfg.host}: recipient {to} refused: {exc.recipients}"[:300], permanent=True) from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise SendError(f"SMTP {cfg.host}:{cfg.port}: {type(exc).__name__}: {exc}"[:300]) from exc
