"""A throwaway PostgreSQL server for the corrections-store tests: ``initdb`` into a temporary folder,
``postgres`` on a free loopback port, trust authentication, stopped at the end. The binaries come
from Debian's postgresql package (``.ci/run`` installs it). As root, the server runs as the
``postgres`` user, since PostgreSQL refuses to run as root."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path


def binaries() -> Path | None:
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(folder, "initdb").is_file():
            return Path(folder)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_server():
    """Yields a SQLAlchemy URL of a fresh server's ``postgres`` database. Its folder is directly under
    the temporary directory: pytest's are private to their owner, and the server's user must enter it."""
    folder = Path(tempfile.mkdtemp(prefix="lucidlm-postgres-"))
    bin_dir = binaries()
    assert bin_dir is not None, "PostgreSQL's binaries are not installed (apt-get install postgresql)"
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data = folder / "pgdata"
    data.mkdir(parents=True)
    if as_user:
        shutil.chown(folder, "postgres")
        shutil.chown(data, "postgres")
    subprocess.run(
        as_user + [str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"],
        check=True,
        capture_output=True,
    )
    port = free_port()
    server = subprocess.Popen(
        as_user
        + [
            str(bin_dir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-k",
            str(folder),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=100",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the PostgreSQL server did not start") from None
                time.sleep(0.1)
        time.sleep(0.3)  # the port opens a moment before connections are accepted
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(folder, ignore_errors=True)
