"""``lucidlm serve``: a JSON API over one saved run, and a page that uses it.

    GET  /                          the page (HTML, one script, one style sheet; no build step, no CDN)
    GET  /api/info                  family, classes, concepts and their values
    GET  /api/health                whether the model's worker runs (503 if not), requests waiting
    POST /api/predict               label, probabilities, concepts, their contributions (value and text parts)
                                    and the next question (the concept most likely to change the label)
    POST /api/predict-batch         the same for up to ``MAX_BATCH_TEXTS`` texts in one forward pass
    POST /api/explain               the full ``Explanation``
    POST /api/intervene             set concept values: the prediction before and after
    POST /api/intervene-subnetwork  rewire a concept's subnetwork for this text (SparseCBM)
    GET  /api/me                    who the request's token is (viewer without one)
    POST /api/corrections           record a correction (corrector): concept values and/or the right label
    GET  /api/corrections           the records, in the order they were stored (``after``, ``limit``)
    POST /api/corrections/{id}/retract   retract a record: a new record (its author, or an admin)
    GET  /api/queue/next            the next text to review and what to ask first (corrector; ``--pool``)
    POST /api/queue/skip            pass over the text held
    GET  /openapi.json              the API's schema

People: a request carries a user's token as ``Authorization: Bearer <token>`` (``lucidlm users
add``). Without one it may only read; recording and the queue need a corrector, retracting
another's record an admin. No token, or one the store does not know: 401; a role too low: 403;
each with one line. No token is ever logged or written anywhere but its hash in the store.

Limits: a text holds at most ``MAX_TEXT_CHARS`` characters and a request body at most
``MAX_BODY_BYTES`` bytes (413). Invalid input, malformed JSON included, is answered 422 with a
one-line ``detail`` naming the field; a request a model family cannot serve is answered 400; a
failure that no input should cause is answered 500 naming the error, on a connection that stays open.
Model work runs on one worker thread behind a bounded queue (``worker``): concurrent predictions
share forward passes, and past the queue's size a request is answered 503 with Retry-After at
once. Recent explanations are cached.
The server reads only the run it was started with and its own three static files: no endpoint
takes a path.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path

from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from ..corrections.access import A_ROLE, User, authenticate
from ..errors import LucidError, Unsupported
from ..explain import Explanation
from ..explain.explanation import CONTRIBUTION_MEANING
from ..outputs import InterventionResult, SubnetworkInterventionResult
from ..version import __version__
from . import schemas
from .schemas import MAX_BODY_BYTES, MAX_TEXT_CHARS
from .service import ModelService
from .worker import Overloaded, ServingLimits

log = logging.getLogger(__name__)
STATIC = ("index.html", "app.js", "style.css")
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# The page loads nothing from anywhere else, and nothing may frame it.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
ERRORS = {
    400: {"model": schemas.Error, "description": "This model family cannot do that."},
    413: {"model": schemas.Error, "description": f"The request body is over {MAX_BODY_BYTES} bytes."},
    422: {"model": schemas.Error, "description": "Invalid input: the detail names the field."},
    401: {"model": schemas.Error, "description": "No token, or one this server does not know."},
    403: {"model": schemas.Error, "description": "The token's role may not do this."},
    500: {
        "model": schemas.Error,
        "description": "The model failed in a way no input should cause: the detail names the error.",
    },
    503: {"model": schemas.Error, "description": "The model's queue is full: retry after the Retry-After seconds."},
}


def create_app(
    model,
    run_dir: str | Path | None = None,
    limits: ServingLimits | None = None,
    store=None,
    fingerprint: str = "",
    queue=None,
) -> FastAPI:
    """The web app over a loaded model (any family); ``run_dir`` only names the run on the page;
    ``store`` (a ``CorrectionStore``) records corrections of the run with ``fingerprint``;
    ``queue`` (a ``ReviewQueue``) hands out texts to review."""
    service = ModelService(model, run_dir, limits, store, fingerprint, queue)
    corrector = needs(service, "corrector")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.close()

    app = FastAPI(
        title="lucidlm",
        version=__version__,
        docs_url=None,
        redoc_url=None,  # their pages load a CDN
        description="Predict, explain and correct an interpretable language-model classifier.",
        lifespan=lifespan,
    )
    app.state.service = service
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    add_error_handlers(app, service.limits)
    static = {name: files(__package__).joinpath("static", name).read_bytes() for name in STATIC}

    def page(name: str):
        def serve() -> Response:
            return Response(static[name], media_type=MEDIA_TYPES[Path(name).suffix], headers=PAGE_HEADERS)

        return serve

    for route, name in (("/", "index.html"), ("/static/app.js", "app.js"), ("/static/style.css", "style.css")):
        app.add_api_route(route, page(name), methods=["GET", "HEAD"], include_in_schema=False)

    @app.get("/api/health", response_model=schemas.Health, responses={503: {"model": schemas.Health}})
    def health():
        """Whether the model's worker thread runs (503 if it has stopped), and how many requests wait."""
        state = service.worker.health()
        return JSONResponse(state, status_code=200 if state["alive"] else 503)

    # The endpoints wait for the model's worker without holding a thread.
    @app.get("/api/info", response_model=schemas.Info)
    def info():
        """What this run is: family, label classes, concepts and the values each can take."""
        return {
            **service.info(),
            "max_text_chars": MAX_TEXT_CHARS,
            "contribution_meaning": CONTRIBUTION_MEANING,
            "corrections": service.corrections_info(),
        }

    @app.post("/api/predict", response_model=schemas.PredictAnswer, responses=ERRORS)
    async def predict(request: schemas.TextRequest):
        """The label with its probabilities; each concept's value, probabilities and contribution (split into
        what its value and what the text carries); what to ask first (``suggestion``)."""
        return await answer(service.predict(request.text))

    @app.post("/api/predict-batch", response_model=list[schemas.PredictAnswer], responses=ERRORS)
    async def predict_batch(request: schemas.BatchRequest):
        """Up to ``MAX_BATCH_TEXTS`` (64) texts in one forward pass: one answer each, in order."""
        return await answer(service.predict_many(request.texts))

    @app.post("/api/explain", response_model=Explanation, responses=ERRORS)
    async def explain(request: schemas.TextRequest):
        """The model's own explanation (token scores, concepts, subnetworks, prototypes). Slower:
        token attributions take integrated gradients for concept models."""
        return await answer(service.explain(request.text))

    @app.post("/api/intervene", response_model=InterventionResult, responses=ERRORS)
    async def intervene(request: schemas.InterveneRequest):
        """Set concepts to given values and recompute the label: before and after."""
        return await answer(service.intervene(request.text, request.values))

    @app.post("/api/intervene-subnetwork", response_model=SubnetworkInterventionResult, responses=ERRORS)
    async def intervene_subnetwork(request: schemas.SubnetworkRequest):
        """Rewire one concept's subnetwork toward a value, for this text only (SparseCBM)."""
        return await answer(
            service.intervene_subnetwork(request.text, request.concept, request.value, request.fraction, request.score)
        )

    @app.get("/api/me", response_model=schemas.Me, responses=ERRORS)
    def me(request: Request):
        """Who the request's token is: name and role (a viewer without a name when there is no token)."""
        user = user_of(service, request)
        return {"name": None, "role": "viewer"} if user is None else {"name": user.name, "role": user.role}

    @app.post("/api/corrections", response_model=schemas.CorrectionAnswer, responses=ERRORS)
    async def record_correction(request: schemas.CorrectionRequest, user: User = Depends(corrector)):
        """Record a correction: the concept values the person set or confirmed, and the label they say
        is right when they give one. The model's reading and its label before and after are recorded
        with them. A record sent again with the same ``key`` is stored once (the stored one is answered)."""
        record, result = await answer(
            service.correction(request.text, request.values, request.label, user.name, request.key, request.note)
        )
        stored = await run_in_threadpool(service.store.append, record)
        return {"record": stored.to_dict(), "result": result}

    @app.get("/api/corrections", response_model=list[schemas.CorrectionRecord], responses=ERRORS)
    def list_corrections(
        after: int = Query(0, ge=0, description="Only records stored after this id."),
        limit: int = Query(100, ge=1, le=1000),
    ):
        """The store's records in the order they were stored, retractions included."""
        return [r.to_dict() for r in recording(service).records(after_id=after, limit=limit)]

    @app.post("/api/corrections/{record_id}/retract", response_model=schemas.CorrectionRecord, responses=ERRORS)
    def retract(record_id: int, request: schemas.RetractRequest, user: User = Depends(corrector)):
        """Retract a record (a new record says so; the old one stays). One's own, or anyone's as an admin."""
        original = recording(service).get(record_id)
        if original.author != user.name and not user.may("admin"):
            raise Denied(403, f"record {record_id} is {original.author}'s: retracting another's record needs an admin")
        return service.store.retract(record_id, user.name, request.reason, request.key).to_dict()

    @app.get("/api/queue/next", response_model=schemas.QueueAnswer, responses=ERRORS)
    def queue_next(user: User = Depends(corrector)):
        """The next text to review, held for this user (nobody else gets it meanwhile), and the concept
        to ask about first; ``text`` null when none is left for this user (``remaining``: those not yet reviewed)."""
        queue = reviewing(service)
        item = queue.next(user.name)
        return {"remaining": queue.waiting()} if item is None else vars(item)

    @app.post("/api/queue/skip", response_model=schemas.QueueAnswer, responses=ERRORS)
    def queue_skip(user: User = Depends(corrector)):
        """Pass over the text this user holds, and get the next."""
        queue = reviewing(service)
        queue.skip(user.name)
        item = queue.next(user.name)
        return {"remaining": queue.waiting()} if item is None else vars(item)

    return app


class Denied(Exception):
    """A request its token may not make: 401 (no token, or an unknown one) or 403 (a role too low)."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


def recording(service: ModelService):
    if service.store is None:
        raise Unsupported("this server records no corrections (it was started without a store)")
    return service.store


def reviewing(service: ModelService):
    if service.queue is None:
        raise Unsupported("this server has no review queue: start it with --pool FILE")
    return service.queue


def user_of(service: ModelService, request: Request) -> User | None:
    """The user whose token the request carries (``Authorization: Bearer <token>``), None without one."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Denied(401, "Authorization: expected 'Bearer <token>'")
    user = authenticate(recording(service), token.strip())
    if user is None:
        raise Denied(401, "the token is not one of this server's users")
    return user


def needs(service: ModelService, role: str):
    """A FastAPI dependency: the request's user, who must have ``role`` or one above it."""

    def check(request: Request) -> User:
        user = user_of(service, request)
        if user is None:
            raise Denied(
                401,
                f"this needs {A_ROLE[role]}'s token (Authorization: Bearer <token>; lucidlm users add NAME --role {role})",
            )
        if not user.may(role):
            raise Denied(403, f"{user.name} is {A_ROLE[user.role]}: this needs {A_ROLE[role]}")
        return user

    return check


class ModelFailure(Exception):
    """Model work failed in a way that no input should cause (a bug, a device error)."""


async def answer(future):
    """The result of model work. An unexpected failure is logged with its traceback and answered
    500 with its name, as JSON like every other answer; left to Starlette, it would also close the
    connection, and a client's next request on it would meet a reset."""
    try:
        return await asyncio.wrap_future(future)
    except (LucidError, Overloaded):
        raise
    except Exception as error:
        log.exception("model work failed")
        raise ModelFailure(f"{type(error).__name__}: {error}") from error


def add_error_handlers(app: FastAPI, limits: ServingLimits) -> None:
    @app.exception_handler(Overloaded)
    async def overloaded(request: Request, error: Overloaded):
        detail = f"the model is busy: {limits.queue_size} requests are waiting; retry in {limits.retry_after} s"
        return JSONResponse(
            {"detail": detail, "errors": []}, status_code=503, headers={"Retry-After": str(limits.retry_after)}
        )

    @app.exception_handler(Denied)
    async def denied(request: Request, error: Denied):
        headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else {}
        return JSONResponse({"detail": error.detail, "errors": []}, status_code=error.status, headers=headers)

    @app.exception_handler(Unsupported)
    async def unsupported(request: Request, error: Unsupported):
        return JSONResponse({"detail": str(error), "errors": []}, status_code=400)

    @app.exception_handler(LucidError)
    async def user_error(request: Request, error: LucidError):
        return JSONResponse({"detail": str(error), "errors": []}, status_code=422)

    @app.exception_handler(ModelFailure)
    async def model_failure(request: Request, error: ModelFailure):
        return JSONResponse({"detail": f"the model failed on this request: {error}", "errors": []}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        details = [describe(e) for e in error.errors()]
        # The input is not echoed back: it may be long, or not even encodable (a lone surrogate).
        errors = [{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in error.errors()]
        return JSONResponse(
            {"detail": "; ".join(details) or "invalid request", "errors": jsonable_encoder(errors)}, status_code=422
        )


def describe(error: dict) -> str:
    """One pydantic error as a person reads it: the field, then what was wrong."""
    location = [str(part) for part in error.get("loc", ()) if part != "body"]
    if error.get("type") == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "")
        return f"malformed JSON: {reason or error.get('msg', '')} (at character {location[0] if location else '?'})"
    field = ".".join(location) or "body"
    if error.get("type") == "string_too_long" and isinstance(error.get("input"), str):
        limit = (error.get("ctx") or {}).get("max_length")
        return f"{field}: at most {limit} characters, found {len(error['input'])}"
    return f"{field}: {error.get('msg', 'invalid').removeprefix('Value error, ')}"


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 before anything parses it,
    whether it declares its length or streams in chunks."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await self.too_large(scope, receive, send)
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                return await self.too_large(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def too_large(self, scope, receive, send):
        detail = f"request body: at most {self.limit} bytes"
        await JSONResponse({"detail": detail, "errors": []}, status_code=413)(scope, receive, send)
