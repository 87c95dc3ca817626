"""Password hashing (argon2id through argon2-cffi). Only hashing lives here.

An unknown login still costs one verify against a dummy hash, so the time of an answer does not
tell whether the login exists. A hash made with weaker parameters than today's is replaced at the
next successful login.
"""

from __future__ import annotations

import secrets
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_LENGTH = 10
MAX_LENGTH = 256

#: argon2id with OWASP's baseline (19 MiB, 2 passes, 1 lane): about 0.1 s on a loaded 2-core server.
#: RFC 9106's 64 MiB x 4 lanes took 0.8-1.4 s there, which turns every login flood into a CPU flood.
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


class PasswordPolicyError(ValueError):
    """The new password is not acceptable (the message says why)."""


def check_policy(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise PasswordPolicyError(f"the password must have at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise PasswordPolicyError(f"the password must have at most {MAX_LENGTH} characters")


def hash_password(password: str) -> str:
    check_policy(password)
    return _hasher.hash(password)


@cache
def _dummy_hash() -> str:
    return _hasher.hash(secrets.token_urlsafe(16))


def verify_password(stored: str | None, password: str) -> bool:
    """True when ``password`` matches ``stored``; with ``stored`` None, spend the same time and say no."""
    if len(password) > MAX_LENGTH:
        password = password[:MAX_LENGTH] + "\x00"  # never matches, still costs one verify
    try:
        return _hasher.verify(stored if stored is not None else _dummy_hash(), password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    try:
        return _hasher.check_needs_rehash(stored)
    except InvalidHashError:
        return True


def generate_password() -> str:
    """A random password people can type (about 96 bits)."""
    return secrets.token_urlsafe(12)
