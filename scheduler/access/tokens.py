"""Random secrets for API tokens, session cookies and CSRF, and how they are stored.

Tokens are 256-bit random values, so a plain SHA-256 is the right way to store them: nothing can be
guessed, and a lookup by hash costs one index read (a slow password hash would only cost CPU).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

TOKEN_PREFIX = "lxa_"
#: Upper bound on anything presented as a credential; longer input is refused unread.
MAX_CREDENTIAL_LENGTH = 200


def new_token() -> str:
    """An API token as shown to its owner once: ``lxa_`` + 43 URL-safe characters."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_secret() -> str:
    """A session id or CSRF token."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def display_prefix(token: str) -> str:
    return token[: len(TOKEN_PREFIX) + 6]


def same(a: str, b: str) -> bool:
    """Constant-time comparison of two secrets."""
    return hmac.compare_digest(a.encode(), b.encode())
