"""Signed media URLs: ``/media/{sha256}`` answers only a URL signed for one gateway.

``sig = HMAC-SHA256(secret, "loaxa-media-v1\\n{sha256}\\n{gateway}\\n{exp}")`` (base64url), with
``exp`` in epoch seconds. The dispatcher puts such a URL into each gateway's plan, so a gateway
fetches exactly what it was sent, and nobody else on the network can read the library by hash.
The secret lives in ``<data_dir>/media-url.key`` (created on first start, mode 0600) unless
``http.media_url_secret`` names one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from pathlib import Path
from urllib.parse import urlencode

from protocol.ids import is_valid_id

#: Extra validity after the broadcast expires, so a late re-fetch (cache eviction, resume) works.
GRACE_S = 24 * 3600
SECRET_MIN_BYTES = 32


class MediaUrlError(ValueError):
    pass


def load_or_create_secret(path: Path) -> bytes:
    """Read the key file, or create it (random 32 bytes, owner-only) when it does not exist."""
    try:
        data = path.read_bytes().strip()
    except FileNotFoundError:
        key = secrets.token_bytes(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64encode(key) + b"\n")
        return key
    try:
        key = base64.b64decode(data, validate=True)
    except ValueError as exc:
        raise MediaUrlError(f"{path.name}: not base64") from exc
    if len(key) < SECRET_MIN_BYTES:
        raise MediaUrlError(f"{path.name}: the key must have at least {SECRET_MIN_BYTES} bytes")
    return key


class MediaUrlSigner:
    def __init__(self, secret: bytes, base_url: str):
        if len(secret) < SECRET_MIN_BYTES:
            raise MediaUrlError(f"the media URL secret must have at least {SECRET_MIN_BYTES} bytes")
        self._secret = secret
        self.base_url = base_url.rstrip("/")

    @property
    def secret(self) -> bytes:
        """The scheduler's URL secret (other signed URLs, e.g. ICS feeds, derive their keys from it)."""
        return self._secret

    def _sig(self, sha256: str, gateway: str, exp: int) -> str:
        msg = f"loaxa-media-v1\n{sha256}\n{gateway}\n{exp}".encode()
        mac = hmac.new(self._secret, msg, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def url(self, sha256: str, gateway: str, until_ms: int) -> str:
        """A URL ``gateway`` can fetch ``sha256`` from until ``until_ms`` (+ a grace day)."""
        exp = until_ms // 1000 + GRACE_S
        query = urlencode({"gw": gateway, "exp": exp, "sig": self._sig(sha256, gateway, exp)})
        return f"{self.base_url}/media/{sha256}?{query}"

    def check(self, sha256: str, gateway: str | None, exp: str | None, sig: str | None, now_s: int) -> str | None:
        """None when the signature is good and not expired; else the reason to refuse."""
        if not gateway or not exp or not sig:
            return "media is served to gateways only, with the signed URL from their plan"
        if not is_valid_id(gateway) or not exp.isdigit() or len(exp) > 12 or len(sig) > 64:
            return "malformed media URL"
        if not hmac.compare_digest(self._sig(sha256, gateway, int(exp)), sig):
            return "bad media URL signature"
        if int(exp) < now_s:
            return "the media URL has expired"
        return None
