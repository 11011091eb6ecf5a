"""The corrections store: every correction a person makes is kept as a record, append-only.

A record holds the text (and pair), the run and its fingerprint, the concept values the model read,
the values the person set or confirmed, the label before and after, the label the person says is
right when they give one, who made it and when. A retraction is a record too (``kind: retraction``,
naming the record it retracts): nothing is ever updated or deleted, and the database itself refuses
an UPDATE or DELETE of a record (a trigger).

SQLite in the run folder by default (``corrections.sqlite``: nothing to install); any SQLAlchemy
URL for a team (``postgresql+psycopg://…``). Every write is one transaction. SQLite runs in WAL
mode with ``synchronous=FULL``: a write that returned is on disk, and readers never wait for writers.

The schema is versioned by the library's own one-row table (``lucidlm_schema``) and a list of
migrations, each a function run in the transaction that moves the version on. Alembic earns its
place when a schema has many authors and branches; this one has two tables, one owner and a
linear history, and a user's store must upgrade itself on open with nothing else to run.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from ..errors import LucidError
from ..layout import STORE_FILE

SCHEMA_VERSION = 1
KINDS = ("correction", "retraction")
MAX_FIELD_CHARS = 10_000  # a text, a pair, a note: longer is refused before anything is written


@dataclass(frozen=True)
class Record:
    """One record of the store. ``set_values``: concept → the value the person set or confirmed
    (only those they touched); ``read_values``: concept → the value the model read; ``gold_label``:
    the label the person says is right (None: they gave none). A retraction has ``retracts`` and
    ``note`` (its reason) and nothing of a correction."""

    kind: str
    author: str
    run: str
    run_fingerprint: str
    text: str = ""
    text_pair: str | None = None
    read_values: dict[str, str] = field(default_factory=dict)
    set_values: dict[str, str] = field(default_factory=dict)
    label_before: str | None = None
    label_after: str | None = None
    gold_label: str | None = None
    retracts: int | None = None
    note: str | None = None
    key: str = ""  # idempotency key: a record sent twice with one key is stored once
    id: int | None = None
    created_at: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _tables():
    from sqlalchemy import JSON, Column, Integer, MetaData, String, Table, Text

    metadata = MetaData()
    schema = Table("lucidlm_schema", metadata, Column("version", Integer, nullable=False))
    records = Table(
        "corrections",
        metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("key", String(64), nullable=False, unique=True),
        Column("kind", String(16), nullable=False),
        Column("created_at", String(40), nullable=False),
        Column("author", String(200), nullable=False),
        Column("run", String(500), nullable=False),
        Column("run_fingerprint", String(64), nullable=False),
        Column("text", Text, nullable=False),
        Column("text_pair", Text),
        Column("read_values", JSON, nullable=False),
        Column("set_values", JSON, nullable=False),
        Column("label_before", String(200)),
        Column("label_after", String(200)),
        Column("gold_label", String(200)),
        Column("retracts", Integer, unique=True),  # a record is retracted once
        Column("note", Text),
    )
    users = Table(
        "users",
        metadata,
        Column("name", String(200), primary_key=True),
        Column("role", String(16), nullable=False),
        Column("token_hash", String(64), nullable=False, unique=True),
        Column("created_at", String(40), nullable=False),
    )
    return metadata, schema, records, users


# The database refuses to rewrite history, whoever connects to it.
APPEND_ONLY = {
    "sqlite": [
        "CREATE TRIGGER corrections_no_update BEFORE UPDATE ON corrections "
        "BEGIN SELECT RAISE(ABORT, 'corrections are append-only: retract a record instead'); END",
        "CREATE TRIGGER corrections_no_delete BEFORE DELETE ON corrections "
        "BEGIN SELECT RAISE(ABORT, 'corrections are append-only: retract a record instead'); END",
    ],
    "postgresql": [
        "CREATE FUNCTION corrections_append_only() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'corrections are append-only: retract a record instead'; END $$",
        "CREATE TRIGGER corrections_no_rewrite BEFORE UPDATE OR DELETE ON corrections "
        "FOR EACH ROW EXECUTE FUNCTION corrections_append_only()",
    ],
}


def _create(connection, tables) -> None:
    from sqlalchemy import text

    metadata = tables[0]
    metadata.create_all(connection, tables=[tables[2], tables[3]])
    for statement in APPEND_ONLY.get(connection.dialect.name, []):
        connection.execute(text(statement))


# version n -> the migration from n - 1 to n
MIGRATIONS: dict[int, Callable] = {1: _create}


def store_url(location: str | Path) -> str:
    """A SQLAlchemy URL for ``location``: a URL as it is, a run folder's own store, or a SQLite file."""
    location = str(location)
    if "://" in location:
        return location
    path = Path(location)
    if path.is_dir():
        path = path / STORE_FILE
    return f"sqlite:///{path.resolve()}"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


class CorrectionStore:
    """The records of one database (``store_url``). Thread-safe: each call takes its own
    connection from the engine's pool."""

    def __init__(self, location: str | Path):
        try:
            from sqlalchemy import create_engine, event
        except ImportError:
            raise LucidError("the corrections store needs SQLAlchemy: pip install 'sqlalchemy>=2'") from None
        self.url = store_url(location)
        self.tables = _tables()
        try:
            self.engine = create_engine(self.url, connect_args={"timeout": 30} if self.url.startswith("sqlite") else {})
        except Exception as e:  # a malformed URL, a driver that is not installed
            raise LucidError(f"corrections store {self.safe_url}: {type(e).__name__}: {e}") from None
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._migrate()

    @property
    def safe_url(self) -> str:
        """The URL without its password, for messages."""
        from sqlalchemy.engine import make_url

        try:
            return make_url(self.url).render_as_string(hide_password=True)
        except Exception:
            return "<unparsable URL>"

    def _migrate(self) -> None:
        from sqlalchemy import inspect, select
        from sqlalchemy.exc import OperationalError, SQLAlchemyError

        _, schema, _, _ = self.tables
        try:
            with self.engine.begin() as connection:
                if not inspect(connection).has_table("lucidlm_schema"):
                    schema.create(connection)
                    connection.execute(schema.insert().values(version=0))
                version = connection.execute(select(schema.c.version)).scalar_one()
                if version > SCHEMA_VERSION:
                    raise LucidError(
                        f"corrections store {self.safe_url}: schema version {version} was written by a newer "
                        f"lucidlm (this one reads up to {SCHEMA_VERSION}); upgrade lucidlm"
                    )
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    MIGRATIONS[step](connection, self.tables)
                    connection.execute(schema.update().values(version=step))
        except (OperationalError, SQLAlchemyError) as e:
            raise LucidError(
                f"corrections store {self.safe_url}: cannot open it ({type(e).__name__}: {str(e).splitlines()[0]})"
            ) from None

    @property
    def schema_version(self) -> int:
        from sqlalchemy import select

        with self.engine.connect() as connection:
            return connection.execute(select(self.tables[1].c.version)).scalar_one()

    # ---- writing: appends only ------------------------------------------------------------------
    def append(self, record: Record) -> Record:
        """Store ``record`` in one transaction and return it with its id and time. A record whose
        ``key`` is already stored is not stored again: the stored one is returned (a client that
        retries after a lost answer gets the same record)."""
        from sqlalchemy.exc import IntegrityError

        _check(record)
        row = {**record.to_dict(), "key": record.key or uuid.uuid4().hex, "created_at": now()}
        row.pop("id")
        records = self.tables[2]
        try:
            with self.engine.begin() as connection:
                if record.kind == "retraction":
                    self._check_retraction(connection, record)
                new_id = connection.execute(records.insert().values(**row)).inserted_primary_key[0]
        except IntegrityError:
            stored = self.by_key(row["key"])
            if stored is not None:
                return stored
            if record.kind == "retraction":  # another retraction of it won the race
                raise LucidError(f"record {record.retracts}: already retracted") from None
            raise
        return Record(**{**row, "id": new_id})

    def _check_retraction(self, connection, record: Record) -> None:
        from sqlalchemy import select

        records = self.tables[2]
        target = connection.execute(select(records.c.kind).where(records.c.id == record.retracts)).first()
        if target is None or target.kind != "correction":
            raise LucidError(f"record {record.retracts}: no such correction to retract")
        again = connection.execute(select(records.c.id).where(records.c.retracts == record.retracts)).first()
        if again is not None:
            raise LucidError(f"record {record.retracts}: already retracted (by record {again.id})")

    def retract(self, record_id: int, author: str, reason: str = "", key: str = "") -> Record:
        """A retraction of record ``record_id``: a new record; the old one stays as it was."""
        original = self.get(record_id)
        return self.append(
            Record(
                kind="retraction",
                author=author,
                run=original.run,
                run_fingerprint=original.run_fingerprint,
                retracts=record_id,
                note=reason or None,
                key=key,
            )
        )

    # ---- reading ----------------------------------------------------------------------------------
    def records(
        self,
        run: str | None = None,
        author: str | None = None,
        kind: str | None = None,
        after_id: int = 0,
        limit: int | None = None,
    ) -> list[Record]:
        """Records in the order they were stored (by id), filtered by run, author and kind."""
        from sqlalchemy import select

        records = self.tables[2]
        query = select(records).where(records.c.id > after_id).order_by(records.c.id)
        for column, value in (("run", run), ("author", author), ("kind", kind)):
            if value is not None:
                query = query.where(records.c[column] == value)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as connection:
            return [_record(row) for row in connection.execute(query).mappings()]

    def get(self, record_id: int) -> Record:
        found = self._one(self.tables[2].c.id == record_id)
        if found is None:
            raise LucidError(f"record {record_id}: no such record in {self.safe_url}")
        return found

    def by_key(self, key: str) -> Record | None:
        return self._one(self.tables[2].c.key == key)

    def _one(self, condition) -> Record | None:
        from sqlalchemy import select

        with self.engine.connect() as connection:
            row = connection.execute(select(self.tables[2]).where(condition)).mappings().first()
        return None if row is None else _record(row)

    def standing(self, run: str | None = None) -> list[Record]:
        """The corrections that stand: not retracted."""
        return standing_of(self.records(run=run))

    def count(self, run: str | None = None) -> int:
        return len(self.standing(run))

    def reviewed_texts(self, run: str | None = None) -> set[str]:
        return {r.text for r in self.standing(run)}

    def export(self, path: str | Path, run: str | None = None, standing_only: bool = False) -> int:
        """Write the records to ``path``: ``.csv``, ``.jsonl``, or a folder for a Hugging Face dataset
        (``datasets.Dataset.save_to_disk``; any other suffix). Returns the count written. Written
        beside the target and renamed over it: a failure leaves nothing half-written."""
        path = Path(path)
        rows = [r.to_dict() for r in (self.standing(run) if standing_only else self.records(run=run))]
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.tmp")
        suffix = path.suffix.lower()
        if suffix == ".jsonl":
            staging.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        elif suffix == ".csv":
            import csv

            with staging.open("w", encoding="utf-8", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(Record.__dataclass_fields__))
                writer.writeheader()
                for row in rows:
                    writer.writerow(
                        {k: json.dumps(v, ensure_ascii=False) if isinstance(v, dict) else v for k, v in row.items()}
                    )
        else:
            import shutil

            from datasets import Dataset

            columns = {name: [_flat(row[name]) for row in rows] for name in Record.__dataclass_fields__}
            shutil.rmtree(staging, ignore_errors=True)
            Dataset.from_dict(columns).save_to_disk(str(staging))
            if path.is_dir():
                shutil.rmtree(path)
        staging.replace(path)
        return len(rows)

    # ---- people -----------------------------------------------------------------------------------
    def users(self) -> list[dict]:
        from sqlalchemy import select

        users = self.tables[3]
        with self.engine.connect() as connection:
            return [
                dict(row)
                for row in connection.execute(
                    select(users.c.name, users.c.role, users.c.created_at).order_by(users.c.name)
                ).mappings()
            ]

    def add_user(self, name: str, role: str, token_hash: str) -> None:
        from sqlalchemy.exc import IntegrityError

        try:
            with self.engine.begin() as connection:
                connection.execute(
                    self.tables[3].insert().values(name=name, role=role, token_hash=token_hash, created_at=now())
                )
        except IntegrityError:
            raise LucidError(
                f"user {name!r} exists already in {self.safe_url}; remove them first to give a new token"
            ) from None

    def remove_user(self, name: str) -> None:
        users = self.tables[3]
        with self.engine.begin() as connection:
            if connection.execute(users.delete().where(users.c.name == name)).rowcount == 0:
                raise LucidError(f"user {name!r}: no such user in {self.safe_url}")

    def user_of(self, token_hash: str) -> dict | None:
        from sqlalchemy import select

        users = self.tables[3]
        with self.engine.connect() as connection:
            row = (
                connection.execute(select(users.c.name, users.c.role).where(users.c.token_hash == token_hash))
                .mappings()
                .first()
            )
        return None if row is None else dict(row)

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(connection, _record) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def standing_of(records: list[Record]) -> list[Record]:
    """The corrections among ``records`` that no retraction among them retracts."""
    retracted = {r.retracts for r in records if r.kind == "retraction"}
    return [r for r in records if r.kind == "correction" and r.id not in retracted]


def _check(record: Record) -> None:
    """A record the store can keep, or an error naming the field."""
    if record.kind not in KINDS:
        raise LucidError(f"kind: expected one of {list(KINDS)}, found {record.kind!r}")
    if not record.author:
        raise LucidError("author: a record needs the name of who made it")
    for name in ("text", "text_pair", "note"):
        value = getattr(record, name)
        if value is not None and len(value) > MAX_FIELD_CHARS:
            raise LucidError(f"{name}: at most {MAX_FIELD_CHARS} characters, found {len(value)}")
    if record.kind == "correction":
        if not record.text.strip():
            raise LucidError("text: a correction needs the text it corrects")
        if not record.set_values and record.gold_label is None:
            raise LucidError("a correction needs concept values (set_values) or a label (gold_label)")
    elif record.retracts is None:
        raise LucidError("retracts: a retraction names the record it retracts")


def _record(row) -> Record:
    row = dict(row)
    for name in ("read_values", "set_values"):
        if isinstance(row[name], str):
            row[name] = json.loads(row[name])
    return Record(**row)


def _flat(value):
    return json.dumps(value, ensure_ascii=False) if isinstance(value, dict) else value
