"""Load a run and serve it with uvicorn (``lucidlm serve``)."""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import LucidError


def load_app(
    run_dir: str | Path,
    limits=None,
    device: str = "auto",
    corrections: str | Path | None = None,
    pool: str | Path | None = None,
    policy: str = "expected_change",
    store=None,
):
    """The web app over the saved run in ``run_dir`` (a FastAPI app); ``limits``: ``ServingLimits``;
    ``device``: where the model runs (``auto``: the GPU when there is one); ``corrections``: the
    store's URL (default: ``corrections.sqlite`` in the run folder, when it has one), or an open
    ``store``; ``pool``: a file of texts to review, in ``policy``'s order (``corrections.queue``)."""
    try:
        from .app import create_app
    except ImportError as e:
        raise LucidError(
            f"lucidlm serve needs the web extra ({e.name} is missing): pip install 'lucidlm[web]'"
        ) from None
    from ..corrections.learn import run_fingerprint
    from ..corrections.queue import ReviewQueue, read_pool
    from ..models import load_pretrained

    texts = read_pool(pool) if pool is not None else None  # a bad pool file fails before the model loads
    model = load_pretrained(run_dir).to(serving_device(device))
    store = store or serving_store(run_dir, corrections, create=pool is not None)
    queue = None if texts is None else ReviewQueue.build(model, texts, store, Path(run_dir).name, policy)
    return create_app(model, run_dir, limits, store, run_fingerprint(run_dir), queue)


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def serving_store(run_dir: str | Path, corrections: str | Path | None = None, create: bool = False):
    """The store a server records into: ``corrections`` (a URL or file), else the run folder's own
    when it has one (or ``create``: a review queue needs one). None: the run has no store, so no user
    and nobody who could record; serving it read-only writes nothing into the run folder."""
    from ..corrections import CorrectionStore
    from ..layout import STORE_FILE

    if corrections is not None or create or (Path(run_dir) / STORE_FILE).is_file():
        return CorrectionStore(corrections if corrections is not None else run_dir)
    return None


def check_exposure(host: str, store) -> None:
    """Serving beyond this machine with no users would let anyone on the network in (and nobody
    could record): refused, in one line."""
    if host not in LOOPBACK and not host.startswith("127.") and (store is None or not store.users()):
        where = "the run has no corrections store" if store is None else f"{store.safe_url} has none"
        raise LucidError(
            f"--host {host}: serving beyond this machine needs users with tokens first "
            f"(lucidlm users add NAME --role corrector); {where}"
        )


def serving_device(name: str = "auto"):
    """``auto``: the first GPU when torch sees one, else the CPU; else the torch device named."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LucidError(f"--device: expected auto, cpu, cuda or cuda:N, found {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LucidError(f"--device {name}: torch sees no GPU here; use --device cpu")
    return device


def listening_socket(host: str = "127.0.0.1", port: int = 8000) -> socket.socket:
    """A socket bound to ``host:port`` for the server, or one line saying why not (a port taken,
    an address not on this machine), before anything says it is serving."""
    if not 0 < port < 65536:
        raise LucidError(f"--port: expected a TCP port in 1..65535, found {port}")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise LucidError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise LucidError(
                f"port {port} on {host} is already in use (another server?); choose another with --port"
            ) from None
        raise LucidError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock


def run_server(web_app, host: str = "127.0.0.1", port: int = 8000, sock: socket.socket | None = None) -> None:
    """Blocks until the server stops. Listens on localhost unless ``host`` says otherwise; ``sock``:
    an already bound socket (``listening_socket``)."""
    import uvicorn

    sock = sock or listening_socket(host, port)
    uvicorn.Server(uvicorn.Config(web_app, log_level="warning")).run(sockets=[sock])


@contextmanager
def serving(web_app, host: str = "127.0.0.1", port: int = 0, timeout: float = 30.0) -> Iterator[str]:
    """Serve ``web_app`` from a background thread while the block runs; yields its base URL.
    Port 0 takes a free one. For tests, scripts and notebooks."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(web_app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the web server did not start on {host}:{port}")
        time.sleep(0.05)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout)
