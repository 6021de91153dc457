"""The FastAPI application: JSON endpoints over a served run, and the static web page at ``/``."""

import enum
import errno
import socket
from pathlib import Path
from typing import Annotated

from fastapi import Body, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

import modalrec
from modalrec.errors import ModalrecError
from modalrec.recommendation import NotFoundError
from modalrec.serve.engine import MAX_K, Engine
from modalrec.serve.schemas import (
    ErrorResponse,
    Health,
    History,
    Info,
    NewUserRecommendations,
    NewUserRequest,
    Recommendations,
    SimilarItems,
)

STATIC = Path(__file__).parent / "static"
ERRORS_404 = {404: {"model": ErrorResponse, "description": "Unknown user or item."}}
ERRORS_422 = {422: {"model": ErrorResponse, "description": "Invalid parameter or body."}}
KQuery = Annotated[int, Query(ge=1, le=MAX_K, description="List length.")]


def _error(status: int, message: str, errors: list | None = None) -> JSONResponse:
    body = ErrorResponse(status=status, message=message, errors=errors).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status)


def _validation_message(exc: RequestValidationError) -> tuple[str, list[dict]]:
    errors = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e.get("loc", ()))
        errors.append({"loc": loc, "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))})
    first = errors[0] if errors else {"loc": "request", "msg": "invalid"}
    return f"{first['loc']}: {first['msg']}".replace("\n", " "), errors


def create_app(
    run_dir: str | Path | None = None, engine: Engine | None = None, model: str | None = None, ann: bool | None = None
) -> FastAPI:
    """Build the app for one run directory (loaded and precomputed here, once).

    Raises :class:`~modalrec.errors.RunError` with a one-line reason when the run
    directory is missing or corrupt — before any server starts. Pass ``engine`` to reuse
    an already loaded one (tests). ``model`` (a spec) replaces the model the run recorded.
    ``ann`` True / False / None: through the run's item index (``modalrec index RUN``), exactly, or as
    :func:`~modalrec.run_index.choose_item_index` decides.
    """
    if engine is None:
        if run_dir is None:
            raise ModalrecError("create_app needs a run directory")
        engine = Engine.from_run_dir(run_dir, model=model, ann=ann)
    info = engine.info()
    app = FastAPI(
        title="modalrec",
        version=modalrec.__version__,
        summary=f"Explained recommendations of {info['model']} on {info['dataset']}.",
        description=(
            "Serves one trained run directory. Errors are JSON objects with `status` and a one-line `message`."
        ),
    )
    app.state.engine = engine
    _add_error_handlers(app)
    _add_service_routes(app, info)
    _add_user_routes(app, engine)
    _add_item_routes(app, engine, info["similar_by"])
    _add_web_page(app)
    return app


async def _not_found(request: Request, exc: NotFoundError) -> JSONResponse:
    return _error(404, str(exc))


async def _bad_request(request: Request, exc: ModalrecError) -> JSONResponse:
    return _error(422, str(exc))


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    message, errors = _validation_message(exc)
    return _error(422, message, errors)


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 400:  # an unparseable body (e.g. not UTF-8) is a malformed body like any other
        return _error(422, f"body: {exc.detail}")
    return _error(exc.status_code, str(exc.detail))


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as ``{status, message}``: unknown ids 404, bad values and bodies 422."""
    app.add_exception_handler(NotFoundError, _not_found)
    app.add_exception_handler(ModalrecError, _bad_request)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StarletteHTTPException, _http)


def _add_service_routes(app: FastAPI, info: dict) -> None:
    """GET /health and GET /info."""

    @app.get("/health", response_model=Health, tags=["service"])
    async def health() -> dict:
        """Liveness: the run is loaded and ranking is ready."""
        return {"status": "ok"}

    @app.get("/info", response_model=Info, tags=["service"])
    async def get_info() -> dict:
        """Model, dataset, counts, modalities, explanation parts, metrics and retrieval (exact or ann)."""
        return info


def _add_user_routes(app: FastAPI, engine: Engine) -> None:
    """A training user's history and recommendations, and recommendations of a new user."""

    @app.get("/users/{user}/history", response_model=History, responses={**ERRORS_404, **ERRORS_422}, tags=["users"])
    async def user_history(user: int) -> dict:
        """The user's training items (titles where the dataset has item_text.tsv)."""
        return engine.history(user)

    @app.get(
        "/users/{user}/recommendations",
        response_model=Recommendations,
        responses={**ERRORS_404, **ERRORS_422},
        tags=["users"],
    )
    async def user_recommendations(
        user: int,
        k: KQuery = 10,
        exclude_seen: Annotated[bool, Query(description="Leave the user's training items out.")] = True,
        explain: Annotated[bool, Query(description="Add the model's per-modality influence of each item.")] = False,
    ) -> dict:
        """Top-k items of a training user, with per-modality explanations if asked."""
        return engine.recommend(user, k, exclude_seen, explain)

    @app.post(
        "/recommendations",
        response_model=NewUserRecommendations,
        responses={**ERRORS_404, **ERRORS_422},
        tags=["users"],
    )
    async def new_user_recommendations(request: Annotated[NewUserRequest, Body()]) -> dict:
        """Top-k for a user unseen in training, folded in from the items they interacted with."""
        return engine.recommend_new(request.items, request.k, request.exclude_seen, request.explain)


def _add_item_routes(app: FastAPI, engine: Engine, similar_by: list[str]) -> None:
    """Similar items, by the model's item representation or a modality's raw features (``similar_by``)."""
    by_enum = enum.Enum("SimilarBy", {v: v for v in similar_by}, type=str)  # type: ignore[misc]
    by_model = by_enum("model")

    @app.get(
        "/items/{item}/similar",
        response_model=SimilarItems,
        responses={**ERRORS_404, **ERRORS_422},
        tags=["items"],
    )
    async def similar_items(
        item: int,
        k: KQuery = 10,
        by: Annotated[
            by_enum, Query(description="model (the model's item representation) or a modality's raw features.")
        ] = by_model,
    ) -> dict:
        """Nearest items by cosine similarity (works for items nobody has interacted with)."""
        return engine.similar(item, k, by.value)


def _add_web_page(app: FastAPI) -> None:
    """The static web page at / and its assets under /static."""

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket bound to (host, port); a busy port is a one-line error."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise ModalrecError(f"--host {host!r}: cannot resolve it ({exc.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # reuse after TIME_WAIT, never a listening port
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        hint = " (another process is using it; choose another --port)" if exc.errno == errno.EADDRINUSE else ""
        raise ModalrecError(f"cannot listen on {host}:{port}: {exc.strerror}{hint}") from None
    return sock


def serve(
    run_dir: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "warning",
    threads: int = 1,
    model: str | None = None,
    ann: bool | None = None,
) -> None:
    """Load ``run_dir`` (refusing to start on a bad one) and serve it with uvicorn until interrupted.

    The port is bound first and the "serving …" line printed only once it is ours, so a busy
    port fails with one line and no false announcement. A request is one user's GEMV and
    top-k, far too small for intra-op parallelism, so torch runs ``threads`` (default 1)
    threads; concurrency comes from the event loop. ``ann`` True: serve training users' lists from
    the run's item index (candidates re-ranked exactly); False: exactly; None: through the index where
    :func:`~modalrec.run_index.choose_item_index` takes it (the line it prints says so).
    """
    import torch
    import uvicorn

    torch.set_num_threads(max(1, threads))
    sock = bind_socket(host, port)
    try:
        app = create_app(run_dir, model=model, ann=ann)
        note = app.state.engine.retrieval_note
        if note:
            print(f"note: {note}", flush=True)
        server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, access_log=False))
        print(f"serving {run_dir} on http://{host}:{port}/ (API docs at /docs)", flush=True)
        server.run(sockets=[sock])
    finally:
        sock.close()
