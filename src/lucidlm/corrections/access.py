"""People and who may do what: users with a role and a token (``lucidlm users add``).

    viewer     reads (what a request without a token may do too)
    corrector  records corrections, retracts their own, takes texts from the review queue
    admin      everything, and retracts anyone's

A token is 32 random bytes (URL-safe base64), shown once when the user is added. The store keeps
only its SHA-256: a token this long cannot be guessed from its hash, so a slow password hash would
buy nothing and cost every request. Nothing logs a token.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from ..errors import LucidError
from .store import CorrectionStore

ROLES = ("viewer", "corrector", "admin")  # each may do what the ones before it may
A_ROLE = {"viewer": "a viewer", "corrector": "a corrector", "admin": "an admin"}  # for messages
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


@dataclass(frozen=True)
class User:
    name: str
    role: str

    def may(self, role: str) -> bool:
        """Whether this user has ``role`` or one above it."""
        return ROLES.index(self.role) >= ROLES.index(role)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def add_user(store: CorrectionStore, name: str, role: str) -> str:
    """Add a user; returns their token (the only time it is seen)."""
    if not NAME.match(name):
        raise LucidError(
            f"user name: expected letters, digits and . _ @ - (at most 64, starting with a letter or digit), "
            f"found {name!r}"
        )
    if role not in ROLES:
        raise LucidError(f"--role: expected one of {list(ROLES)}, found {role!r}")
    token = secrets.token_urlsafe(32)
    store.add_user(name, role, hash_token(token))
    return token


def authenticate(store: CorrectionStore, token: str | None) -> User | None:
    """The user whose token this is, or None (no token, or one the store does not know)."""
    if not token:
        return None
    found = store.user_of(hash_token(token))
    return None if found is None else User(found["name"], found["role"])
