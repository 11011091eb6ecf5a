"""Corrections that teach: a store of the corrections people make, who may make them, a queue of
texts to review, and learning a new run from them (``lucidlm corrections``, ``users``, ``learn``)."""

from .access import ROLES, User, add_user, authenticate
from .store import STORE_FILE, CorrectionStore, Record, store_url

__all__ = ["ROLES", "STORE_FILE", "CorrectionStore", "Record", "User", "add_user", "authenticate", "store_url"]
