"""`tinygemma serve`: an OpenAI-compatible completions API and a story page, on FastAPI.

The web layer only translates HTTP to the generation code: it checks a request, turns its prompts
into batching.Sequence objects, queues them on the batching.Engine (which writes every sequence
in one continuous batch, in its own thread) and passes the text pieces back, streamed as
server-sent events or whole. Routes (docs/SERVE.md):

    POST /v1/completions   prompt (string, strings, token ids), max_tokens, temperature, top_p, top_k,
                           stop, n, seed, stream (+ stream_options.include_usage)
    GET  /v1/models        the one model served
    GET  /health           {"status": "ok", model, rows, capacity, active, waiting, finished: {reason: count}}
    GET  /                 the page: prompt, temperature, length, Write and Stop

There is no /v1/chat/completions: a story model continues text and has no chat format to map
messages onto. Errors are OpenAI's shape, {"error": {"message", "type", "param", "code"}}.
A prompt longer than the context keeps its last tokens (usage.prompt_tokens_truncated says how many went).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import threading
import time
import uuid
from importlib import resources
from typing import Any, AsyncIterator, Callable, Union

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException

from tinygemma.batching import Engine, QueueFull, Sampling, Sequence
from tinygemma.errors import TinyGemmaError
from tinygemma.generate import encode_prompt

MAX_BODY_BYTES = 1 << 20  # a request body past this gets 413
MAX_SEQUENCES = 16  # prompts x n in one request
MAX_STOP = 4  # stop strings, as OpenAI
UNSUPPORTED = {"echo": False, "logprobs": None, "suffix": None, "best_of": 1, "frequency_penalty": 0,
               "presence_penalty": 0, "logit_bias": None}  # OpenAI fields we accept only at their default


class ApiError(Exception):
    """An answer in OpenAI's error shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers
        self.body = {"error": {"message": message, "type": kind, "param": param, "code": code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


class CompletionRequest(BaseModel):
    """The body of POST /v1/completions; unknown fields are ignored, types are strict (no "16" for 16)."""

    model_config = ConfigDict(extra="ignore", strict=True)
    model: str | None = None
    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: int | None = Field(16, ge=1)
    temperature: float | None = Field(1.0, ge=0, le=2)
    top_p: float | None = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)
    stop: Union[str, list[str], None] = None
    n: int | None = Field(1, ge=1, le=MAX_SEQUENCES)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    echo: bool | None = None
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None


def parse_request(body: bytes) -> CompletionRequest:
    """The JSON body -> a checked request, or ApiError 400 naming the first bad field."""
    try:
        req = CompletionRequest.model_validate_json(body)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(p) for p in err["loc"]) or None
        if err["type"] == "json_invalid":
            raise ApiError(400, f"the body is not valid JSON: {err['msg']}", code="invalid_json") from None
        where = f"{param}: " if param else ""
        raise ApiError(400, f"{where}{err['msg']}", param=param.split(".")[0] if param else None,
                       code="invalid_value") from None
    for name, default in UNSUPPORTED.items():
        value = getattr(req, name)
        if value not in (None, default, {}):
            raise ApiError(400, f"{name} is not supported by this server", param=name, code="unsupported")
    stops = [req.stop] if isinstance(req.stop, str) else req.stop or []
    if len(stops) > MAX_STOP or any(not s for s in stops):
        raise ApiError(400, f"stop takes up to {MAX_STOP} non-empty strings", param="stop", code="invalid_value")
    return req


def prompt_ids(req: CompletionRequest, tokenizer, vocab_size: int) -> list[list[int]]:
    """The request's prompts as token ids: text starts as documents start in training, ids pass as they are."""
    p = req.prompt
    prompts = [p] if isinstance(p, str) or (p and isinstance(p[0], int)) else p
    if not prompts or len(prompts) * (req.n or 1) > MAX_SEQUENCES:
        raise ApiError(400, f"prompt must hold 1 to {MAX_SEQUENCES} prompts, and prompts x n at most {MAX_SEQUENCES}",
                       param="prompt", code="invalid_value")
    out = [encode_prompt(tokenizer, q) if isinstance(q, str) else list(q) for q in prompts]
    if any(not ids or not all(0 <= t < vocab_size for t in ids) for ids in out):
        raise ApiError(400, f"a token-id prompt must be non-empty with ids in 0..{vocab_size - 1}",
                       param="prompt", code="invalid_value")
    return out


def fit_context(prompts: list[list[int]], max_tokens: int, context: int) -> tuple[list[list[int]], int]:
    """Cut each prompt from the left so prompt + max_tokens fits the context -> (prompts, tokens cut)."""
    if max_tokens > context - 1:
        raise ApiError(400, f"max_tokens is {max_tokens}, but the context holds {context} tokens: at most "
                       f"{context - 1} new ones", param="max_tokens", code="context_length_exceeded")
    keep = context - max_tokens
    return [p[-keep:] for p in prompts], sum(max(0, len(p) - keep) for p in prompts)


class Mailbox:
    """Events from the engine's thread to the event loop, handed over once per decoding step: one
    wake-up of the loop for the step's 16 or 32 text pieces rather than one for each."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._items: list[tuple[asyncio.Queue, tuple]] = []
        self._lock = threading.Lock()

    def post(self, queue: asyncio.Queue, item: tuple) -> None:
        """From the engine's thread: `item` goes into `queue` at the next flush."""
        with self._lock:
            self._items.append((queue, item))

    def flush(self) -> None:
        """From the engine's thread, after each step (Engine.after_each_step)."""
        with self._lock:
            items, self._items = self._items, []
        if items and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._deliver, items)

    @staticmethod
    def _deliver(items: list[tuple[asyncio.Queue, tuple]]) -> None:
        for queue, item in items:
            queue.put_nowait(item)


class Job:
    """One request's sequences on the engine, and the events they send back to the event loop."""

    def __init__(self, req: CompletionRequest, prompts: list[list[int]], mailbox: Mailbox):
        self.events: asyncio.Queue[tuple[int, str, str | None]] = asyncio.Queue()
        stops = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        n = req.n or 1
        self.seqs = []
        for i, ids in enumerate(p for p in prompts for _ in range(n)):  # OpenAI's order: prompt-major
            seed = None if req.seed is None else (req.seed + i) % 2**64  # choice i: seed + i
            sampling = Sampling(req.max_tokens or 16, 1.0 if req.temperature is None else req.temperature,
                                req.top_k, req.top_p, seed, stops)
            put = lambda piece, reason, i=i: mailbox.post(self.events, (i, piece, reason))  # noqa: E731
            self.seqs.append(Sequence(ids, sampling, put))
        self.prompt_tokens = sum(len(p) for p in prompts)

    def cancel(self) -> None:
        for s in self.seqs:
            s.cancel()

    def usage(self, truncated: int) -> dict[str, int]:
        done = sum(s.tokens for s in self.seqs)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": done,
                "total_tokens": self.prompt_tokens + done, "prompt_tokens_truncated": truncated}


def _choice(index: int, text: str, reason: str | None) -> dict[str, Any]:
    return {"text": text, "index": index, "logprobs": None, "finish_reason": reason}


def _sse(obj: Any) -> bytes:
    return f"data: {json.dumps(obj) if not isinstance(obj, str) else obj}\n\n".encode()


def _text_events(head: dict[str, Any]) -> Callable[[list[tuple[int, str, str | None]]], bytes]:
    """The SSE events of text pieces (i, piece, reason) as one body chunk: the same JSON as
    _sse({**head, "choices": [_choice(i, piece, reason)]}) for each, with `head` encoded once per
    completion. At 16 streams of one token per step, formatting and sending is work the event
    loop does while the decoding thread waits for the GIL."""
    start = "data: " + json.dumps({**head, "choices": [{"text": None}]}).removesuffix("null}]}")
    return lambda events: "".join(
        f'{start}{json.dumps(piece)}, "index": {i}, "logprobs": null, "finish_reason": {json.dumps(reason)}}}]}}\n\n'
        for i, piece, reason in events).encode()


async def stream_job(job: Job, head: dict[str, Any], truncated: int, include_usage: bool) -> AsyncIterator[bytes]:
    """SSE chunks: text pieces, each choice's finish reason, usage if asked, then [DONE]. Events that
    are already waiting go out as one chunk. A client that goes away cancels the generator here, and
    its sequences leave the batch at the next step."""
    text_events = _text_events(head)
    try:
        left = len(job.seqs)
        while left:
            events = [await job.events.get()]
            while not job.events.empty():
                events.append(job.events.get_nowait())
            failed = next((k for k, (_, _, reason) in enumerate(events) if reason == "error"), None)
            if failed is not None:
                yield text_events(events[:failed]) + _sse(ApiError(500, "generation failed", kind="server_error").body)
                return
            left -= sum(reason is not None for _, _, reason in events)
            yield text_events(events)
        if include_usage:
            yield _sse({**head, "choices": [], "usage": job.usage(truncated)})
        yield _sse("[DONE]")
    finally:
        job.cancel()


async def collect_job(job: Job, request: Request) -> list[dict[str, Any]]:
    """Wait for every choice's whole text; cancel if the client goes away meanwhile."""
    texts, reasons = [""] * len(job.seqs), [None] * len(job.seqs)
    try:
        while any(r is None for r in reasons):
            try:
                i, piece, reason = await asyncio.wait_for(job.events.get(), timeout=1.0)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    return []
                continue
            if reason == "error":
                raise ApiError(500, "generation failed", kind="server_error")
            texts[i] += piece
            reasons[i] = reason
    finally:
        job.cancel()
    return [_choice(i, t, r) for i, (t, r) in enumerate(zip(texts, reasons))]


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, or 413 as soon as it passes `limit` bytes."""
    too_big = ApiError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_big
    return bytes(body)


def create_app(engine: Engine, model_name: str, api_key: str | None = None) -> FastAPI:
    """The FastAPI app over a started Engine; with `api_key`, /v1/ asks for `Authorization: Bearer KEY`."""
    async def authorized(request: Request) -> None:  # async: no thread hop for every request
        given = request.headers.get("authorization", "")
        if api_key and not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise ApiError(401, "a valid API key is needed: Authorization: Bearer KEY", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    app = FastAPI(title="tinygemma", docs_url=None, redoc_url=None, openapi_url=None)
    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorized)])
    created = int(time.time())
    vocab = engine.model.config.vocab_size
    mailboxes: dict[asyncio.AbstractEventLoop, Mailbox] = {}

    def mailbox(loop: asyncio.AbstractEventLoop) -> Mailbox:
        """The event loop's mailbox, made with its first request (an app normally runs on one loop)."""
        if loop not in mailboxes:
            mailboxes[loop] = box = Mailbox(loop)
            engine.after_each_step(box.flush)
        return mailboxes[loop]

    @app.exception_handler(ApiError)
    async def api_error(_request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse(e.body, status_code=e.status, headers=e.headers)

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, e: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        return JSONResponse(ApiError(e.status_code, str(e.detail), code=code).body, status_code=e.status_code)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, **engine.stats()}

    @v1.get("/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "tinygemma"}]}

    @v1.post("/chat/completions")
    def chat() -> None:
        raise ApiError(404, "this server has no chat endpoint: a story model continues text; use /v1/completions",
                       code="not_found")

    @v1.post("/completions")
    async def completions(request: Request):
        req = parse_request(await read_body(request))
        prompts, truncated = fit_context(prompt_ids(req, engine.tokenizer, vocab), req.max_tokens or 16, engine.max_len)
        job = Job(req, prompts, mailbox(asyncio.get_running_loop()))
        submit(engine, job)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": model_name}
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(stream_job(job, head, truncated, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return {**head, "choices": await collect_job(job, request), "usage": job.usage(truncated)}

    app.include_router(v1)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        html = resources.files("tinygemma").joinpath("serve_page.html").read_text(encoding="utf-8")
        return html.replace("__MODEL__", model_name).replace("__KEY_HIDDEN__", "" if api_key else "hidden")

    return app


def submit(engine: Engine, job: Job) -> None:
    """Queue a job's sequences; 429 with Retry-After when the engine holds all it may."""
    if len(job.seqs) > engine.capacity:
        raise ApiError(400, f"this server writes at most {engine.capacity} sequences at once; ask for fewer",
                       param="n", code="invalid_value")
    try:
        engine.submit(job.seqs)
    except QueueFull as e:
        raise ApiError(429, f"the server is busy ({e}); retry shortly", code="queue_full", kind="rate_limit_error",
                       headers={"Retry-After": "1"}) from None
    except TinyGemmaError as e:
        raise ApiError(400, str(e), param="prompt", code="invalid_value") from None


def run(engine: Engine, model_name: str, host: str, port: int, api_key: str | None) -> None:
    """Serve until Ctrl-C or SIGTERM, then stop the engine.

    The engine's decode loop runs in this (the main) thread and uvicorn in another: the main
    thread loaded the model, and torch's CPU threads work at full speed only for the thread
    that used them first (batching.py). Signals are handled here, so both stop together."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(engine, model_name, api_key), host=host, port=port,
                                           log_level="info", timeout_graceful_shutdown=2))

    def serve() -> None:
        try:
            server.run()  # outside the main thread uvicorn leaves the signals alone
        finally:
            engine.close()  # the server ended (stopped, or could not start): end the decode loop too

    def stop(_signum, _frame) -> None:
        server.should_exit = True

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    thread = threading.Thread(target=serve, name="uvicorn")
    thread.start()
    try:
        engine.run()
    finally:
        server.should_exit = True
        thread.join()
        for s, handler in old.items():
            signal.signal(s, handler)
    if not server.started:
        raise TinyGemmaError(f"could not serve on {host}:{port} (uvicorn's log above says why; "
                             "is the port already in use? choose another with --port)")
