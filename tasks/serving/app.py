"""``webvse serve``: the HTTP API and the web page over one :class:`Retriever`.

JSON endpoints (every error is ``{"error": "..."}`` with a 4xx status):

* ``GET /health``: run, stage, collection size, search kind, the run's test R@1/R@10;
* ``GET /api/text-to-images?q=&k=&page=``: images for a text;
* ``GET /api/image-to-captions?id=&k=&page=``: captions for an image of the collection;
* ``POST /api/image-to-captions`` (multipart field ``image``; ``k``, ``page`` in the query):
  captions for an uploaded image;
* ``GET /images/{id}``: a collection image's thumbnail, by sha256 only.

The page (``GET /``, ``POST /`` for an upload) is server-side Jinja2 with no JavaScript.
Bodies over :data:`MAX_BODY_BYTES` are refused with 413 before they are parsed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from storage.errors import InputError, MissingInputError, WebvseError
from tasks.serving.retrieval import MAX_DEPTH, MAX_K, MAX_UPLOAD_BYTES, Answer, ImageHit, Retriever, preview_data_uri

MAX_BODY_BYTES = MAX_UPLOAD_BYTES + 64 * 1024  # the image and the form around it
TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, by Content-Length or while streaming,
    so a 50 MB upload is never parsed or held in memory."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        seen = 0
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(
            {"error": f"the request is larger than {self.limit // 2**20} MB; images up to {MAX_UPLOAD_BYTES // 2**20} MB"}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _status(problem: WebvseError) -> int:
    return 404 if isinstance(problem, MissingInputError) else 400


def _answer_json(answer: Answer) -> dict[str, Any]:
    data = {key: value for key, value in vars(answer).items() if key != "hits"}
    data["score_range"] = {"min": data.pop("score_min"), "median": data.pop("score_median"), "max": data.pop("score_max")}
    data["hits"] = [vars(hit) | ({"image_url": f"/images/{hit.id}"} if isinstance(hit, ImageHit) else {}) for hit in answer.hits]
    return data


def _int(value: str | None, name: str, default: int) -> int:
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise InputError(f"{name} must be a whole number, got {value!r}") from None


async def _upload(request: Request) -> tuple[bytes, str]:
    form = await request.form(max_files=1, max_fields=8)
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        raise InputError("send the image as the multipart form field 'image'")
    data = await upload.read(MAX_UPLOAD_BYTES + 1)
    return data, upload.filename or "upload"


def create_app(retriever: Retriever) -> FastAPI:
    """The app over one loaded retriever (tests build it directly; ``webvse serve`` runs it under uvicorn)."""
    app = FastAPI(title="webvse", summary="cross-modal image-text retrieval with a webly supervised joint embedding")
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    health = retriever.health()

    @app.exception_handler(WebvseError)
    async def _known(request: Request, problem: WebvseError) -> JSONResponse:
        return JSONResponse({"error": str(problem)}, status_code=_status(problem))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, problem: StarletteHTTPException) -> JSONResponse:
        if problem.status_code == 404:  # no route: e.g. a path smuggled into an image id
            said = f"no such address {request.url.path!r}; images are /images/<sha256>, the API is /health, /api/text-to-images, /api/image-to-captions"
        else:
            said = str(problem.detail)
        return JSONResponse({"error": said}, status_code=problem.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, problem: RequestValidationError) -> JSONResponse:
        said = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in problem.errors())
        return JSONResponse({"error": said}, status_code=422)

    @app.get("/health")
    def _health() -> dict[str, Any]:
        return health

    @app.get("/api/text-to-images")
    def _text(q: str = "", k: int = 10, page: int = 1) -> dict[str, Any]:
        return _answer_json(retriever.text_to_images(q, k, page))

    @app.get("/api/image-to-captions")
    def _captions_of_item(id: str = "", k: int = 10, page: int = 1) -> dict[str, Any]:
        if not id:
            raise InputError("name an image of the collection (?id=<sha256>) or POST one as the form field 'image'")
        return _answer_json(retriever.captions_for_item(id, k, page))

    @app.post("/api/image-to-captions")
    async def _captions_of_upload(request: Request, k: int = 10, page: int = 1) -> dict[str, Any]:
        data, name = await _upload(request)
        answer = await run_in_threadpool(retriever.captions_for_upload, data, name, k, page)
        return _answer_json(answer)

    @app.get("/images/{image_id}")
    def _image(image_id: str) -> Response:
        return Response(retriever.thumbnail(image_id), media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})

    def page(request: Request, status: int = 200, **shown: Any) -> HTMLResponse:
        context = {"health": health, "max_k": MAX_K, "max_depth": MAX_DEPTH, "max_upload_mb": MAX_UPLOAD_BYTES // 2**20, **shown}
        return TEMPLATES.TemplateResponse(request, "page.html", context, status_code=status)

    @app.get("/", response_class=HTMLResponse)
    def _page(request: Request) -> HTMLResponse:
        params = request.query_params
        q, image_id = params.get("q", ""), params.get("id", "")
        try:
            k, number = _int(params.get("k"), "k", 10), _int(params.get("page"), "page", 1)
            if image_id:
                item = retriever.item(image_id)
                answer = retriever.captions_for_item(image_id, k, number)
                return page(
                    request,
                    answer=answer,
                    q=q,
                    k=k,
                    query_image=f"/images/{image_id}",
                    query_labels=list(item["labels"]),
                    query_id=image_id,
                )
            if "q" in params:
                return page(request, answer=retriever.text_to_images(q, k, number), q=q, k=k)
        except WebvseError as problem:
            return page(request, _status(problem), error=str(problem), q=q, k=params.get("k", 10))
        return page(request, q="", k=10)

    @app.post("/", response_class=HTMLResponse)
    async def _page_upload(request: Request) -> HTMLResponse:
        try:
            data, name = await _upload(request)
            answer = await run_in_threadpool(retriever.captions_for_upload, data, name, 10, 1)
            return page(request, answer=answer, q="", k=10, query_image=preview_data_uri(data), query_labels=[], query_id="")
        except WebvseError as problem:
            return page(request, _status(problem), error=str(problem), q="", k=10)

    return app
