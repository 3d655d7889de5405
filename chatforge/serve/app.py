"""The HTTP server: OpenAI-compatible API, the web chat page at `/`, the feedback API, health and metrics.

    chatforge serve --run runs/demo --stage sft [--host 127.0.0.1 --port 8000] [--api-key KEY]

Endpoints: GET /v1/models; POST /v1/chat/completions; POST /v1/completions; POST /tokenize, /detokenize;
GET /tokenizer_info, /health, /metrics (Prometheus text); the feedback API under /feedback (see
`feedback_routes`). Errors are OpenAI's `{"error": {"message", "type", "param", "code"}}`: 400 bad input,
401 bad or missing key (with --api-key), 404 unknown id, 413 body too large, 429 queue full, 503 engine
down; 500 only for real faults. Generation goes through one `Scheduler` (continuous batching; the engine in its own process).

Moderation (`--moderation off|input|output|both`, default both when the run has a trained moderator): chat
completions only (`/v1/completions` is the raw scoring endpoint of evaluation harnesses and is not moderated).
Input: the last user message is scored; flagged -> nothing is generated, one choice with a short refusal in the
question's language and finish_reason "content_filter", and the response's `moderation.input` gives
{"flagged", "score"}. Output: each answer is scored (over windows of the moderator's output_window
characters); flagged -> its text is withheld ("" without streaming; when streaming, deltas stop before the
flagged one and the choice ends with finish_reason "content_filter"); each choice carries `moderation`
{"flagged", "score"}. A request's "moderation": false is honoured only with --moderation-allow-optout (else 400).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from chatforge import ChatforgeError
from chatforge.data.clean.text import is_chinese
from chatforge.engine import Completion, PromptError, SamplingParams, StreamEvent, check_prompt_ids
from chatforge.serve.protocol import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    TokenText,
    chat_logprobs,
    chat_messages,
    check_sampling,
    completion_logprobs,
    completion_prompts,
    new_id,
    now,
    usage,
)
from chatforge.serve.scheduler import QueueFull, Scheduler, SchedulerStopped, Ticket
from chatforge.serve.store import FeedbackStore, NotFound
from chatforge.tokenizer import Tokenizer

STATIC = Path(__file__).parent / "static"
RETRIEVAL_ANSWER_ROOM = 64  # prompt tokens kept free for the answer when retrieved passages are fitted in


@dataclass
class ServeOptions:
    model_name: str = "chatforge"
    api_key: str | None = None
    max_queue: int = 64  # sequences waiting beyond the engine's running rows; more -> 429
    max_tokens_limit: int = 4096  # largest max_tokens a request may ask for
    max_body_bytes: int = 1 << 20
    default_max_tokens: int | None = None  # chat without max_tokens: the rest of the context, capped here
    retrieval: bool = False  # chat requests answer from the run's index unless they say retrieval: false
    retrieval_k: int = 3  # passages put into the prompt
    calculator: bool = False  # chat requests' <<calc: EXPR>> calls get their values unless they say calculator: false
    # moderation of chat completions (chatforge.safety.moderation): off | input | output | both; None: both when
    # the run has a trained moderator, else off. A threshold overrides the moderator's validated one.
    moderation: str | None = None
    moderation_threshold: float | None = None
    moderation_optout: bool = False  # a request's "moderation": false is honoured (else it is a 400)


def _sse(events) -> StreamingResponse:
    """A server-sent-events response over an async iterator of "data: ..." strings (proxies must not buffer it)."""
    return StreamingResponse(events, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


MODERATION_MODES = ("off", "input", "output", "both")
REFUSAL = {"en": "Sorry, I can't help with that request.", "zh": "抱歉，我不能协助处理这个请求。"}


class Gate:
    """ASGI middleware in front of everything: the API-key check, the body-size limit (413 before the body is
    read into memory) and the error counts for /metrics. Pure ASGI on purpose: Starlette's
    BaseHTTPMiddleware copies every chunk of a streaming response through a memory stream, a per-token cost
    that showed up under load."""

    def __init__(self, app, server: Server):
        self.app, self.server = app, server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        opts, path = self.server.opts, scope["path"]
        headers = dict(scope.get("headers") or [])
        if opts.api_key and not (path == "/" or any(path.startswith(p) for p in OPEN_PATHS[1:])):
            if headers.get(b"authorization", b"") != f"Bearer {opts.api_key}".encode():
                self.server._count(401)
                return await _send_json(send, ApiError(401, "missing or wrong API key (send 'Authorization: "
                                                            "Bearer <key>')", code="invalid_api_key"))
        limit = opts.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            self.server._count(413)
            return await _send_json(send, ApiError(413, f"request body over {limit} bytes", code="body_too_large"))
        seen = 0

        async def limited_receive():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise ApiError(413, f"request body over {limit} bytes", code="body_too_large")
            return msg

        async def counting_send(msg):
            if msg["type"] == "http.response.start":
                self.server._count(msg["status"])
            await send(msg)

        return await self.app(scope, limited_receive, counting_send)


async def _send_json(send, err: ApiError):
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if err.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _error_response(err: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


OPEN_PATHS = ("/", "/health", "/metrics", "/static")


class Server:
    """Holds the scheduler (and through it the engine), tokenizer, store and options; `app` is the FastAPI
    application."""

    def __init__(self, scheduler: Scheduler, tok: Tokenizer, store: FeedbackStore | None, opts: ServeOptions,
                 index=None, moderator=None):
        self.scheduler, self.tok, self.store, self.opts = scheduler, tok, store, opts
        self.index = index  # a RetrievalIndex, when the run has one
        self.moderator = moderator  # a safety.moderation.Moderator when moderation is on
        self.flagged = {"input": 0, "output": 0}
        self.ctx, self.vocab = scheduler.ctx, scheduler.vocab
        self.tt = TokenText(self.tok, self.vocab)
        self.started = time.time()
        self.errors: dict[int, int] = {}
        self.ttft: list[float] = []
        self.app = self._build()

    # -- app ------------------------------------------------------------------------------------------------
    def _build(self) -> FastAPI:
        @contextlib.asynccontextmanager
        async def lifespan(_app):
            self.scheduler.start()
            yield
            self.scheduler.stop()

        app = FastAPI(title="chatforge", docs_url="/docs", redoc_url=None, lifespan=lifespan)

        @app.exception_handler(ApiError)
        async def _api_error(_req, e: ApiError):
            return _error_response(e)

        @app.exception_handler(RequestValidationError)
        async def _validation(_req, e: RequestValidationError):
            first = e.errors()[0] if e.errors() else {}
            loc = [str(x) for x in first.get("loc", ()) if x != "body"]
            if first.get("type") == "json_invalid":
                return _error_response(ApiError(400, "the request body is not valid JSON", code="invalid_json"))
            msg = f"{'.'.join(loc) or 'body'}: {first.get('msg', 'invalid value')}"
            return _error_response(ApiError(400, msg, ".".join(loc) or None, code="invalid_value"))

        @app.exception_handler(StarletteHTTPException)
        async def _http(_req, e: StarletteHTTPException):
            return _error_response(ApiError(e.status_code, str(e.detail), code=None,
                                            type_="invalid_request_error" if e.status_code < 500 else None))

        @app.exception_handler(Exception)
        async def _fault(_req, e: Exception):
            return _error_response(ApiError(500, f"internal error: {type(e).__name__}: {e}"))

        app.add_middleware(Gate, server=self)

        @app.get("/", include_in_schema=False)
        async def index():
            return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

        @app.get("/static/{name}", include_in_schema=False)
        async def static(name: str):
            f = STATIC / name
            if "/" in name or not f.is_file():
                raise ApiError(404, f"no file {name}")
            return FileResponse(f)

        @app.get("/health")
        async def health():
            ok = self.scheduler.fault is None
            return JSONResponse({"status": "ok" if ok else "error", "model": self.opts.model_name},
                                status_code=200 if ok else 503)

        @app.get("/metrics")
        async def metrics():
            return PlainTextResponse(self._metrics(), media_type="text/plain; version=0.0.4")

        @app.get("/v1/models")
        async def models():
            return {"object": "list", "data": [self._model_card()]}

        @app.get("/v1/models/{name}")
        async def model(name: str):
            if name != self.opts.model_name:
                raise ApiError(404, f"no model {name!r}; this server serves {self.opts.model_name!r}",
                               "model", "model_not_found")
            return self._model_card()

        @app.get("/tokenizer_info")
        async def tokenizer_info():
            t = self.tok
            return {"model": self.opts.model_name, "vocab_size": t.vocab_size, "model_vocab_size": self.vocab,
                    "max_model_len": self.ctx, "bos_token_id": t.bos_id, "eos_token_id": t.eos_id,
                    "pad_token_id": t.pad_id, "end_token_id": t.end_id,
                    "role_token_ids": dict(t.role_ids), "chat_template": "chatforge"}

        @app.post("/tokenize")
        async def tokenize(request: Request):
            body = await _json_body(request)
            if "messages" in body:
                msgs = chat_messages(self.tok, _list(body, "messages"))
                ids = self._encode_chat(msgs, body.get("add_generation_prompt", True))
            elif isinstance(body.get("prompt"), str):
                ids = self.tok.encode(body["prompt"])
            else:
                raise ApiError(400, "give 'prompt' (a string) or 'messages'", "prompt")
            return {"tokens": ids, "count": len(ids), "max_model_len": self.ctx}

        @app.post("/detokenize")
        async def detokenize(request: Request):
            body = await _json_body(request)
            ids = body.get("tokens")
            if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                raise ApiError(400, "'tokens' must be a list of token ids", "tokens")
            if any(i < 0 or i >= self.vocab for i in ids):
                raise ApiError(400, f"token ids must be in 0..{self.vocab - 1}", "tokens")
            return {"prompt": self.tok.decode(ids, skip_special=False)}

        @app.post("/v1/chat/completions")
        async def chat_completions(req: ChatRequest, request: Request):
            return await self._chat(req, request)

        @app.post("/v1/completions")
        async def completions(req: CompletionRequest, request: Request):
            return await self._complete(req, request)

        if self.store is not None:
            from chatforge.serve.feedback_api import feedback_routes

            app.include_router(feedback_routes(self))
        return app

    def _count(self, status: int) -> None:
        if status >= 400:
            self.errors[status] = self.errors.get(status, 0) + 1

    def _model_card(self) -> dict:
        return {"id": self.opts.model_name, "object": "model", "created": int(self.started), "owned_by": "chatforge",
                "max_model_len": self.ctx}

    def _metrics(self) -> str:
        s = self.scheduler
        lines = [
            "# HELP chatforge_requests_running Sequences in the running batch.",
            "# TYPE chatforge_requests_running gauge", f"chatforge_requests_running {s.running}",
            "# HELP chatforge_requests_waiting Sequences queued for a free row.",
            "# TYPE chatforge_requests_waiting gauge", f"chatforge_requests_waiting {s.waiting}",
            "# HELP chatforge_generation_tokens_per_second Generated tokens per second over the last 10 s.",
            "# TYPE chatforge_generation_tokens_per_second gauge",
            f"chatforge_generation_tokens_per_second {s.tokens_per_second():.3f}",
            "# TYPE chatforge_generation_tokens_total counter", f"chatforge_generation_tokens_total {s.generated_tokens}",
            "# TYPE chatforge_prompt_tokens_total counter", f"chatforge_prompt_tokens_total {s.prompt_tokens}",
            "# TYPE chatforge_sequences_finished_total counter", f"chatforge_sequences_finished_total {s.finished_requests}",
            "# TYPE chatforge_sequences_cancelled_total counter",
            f"chatforge_sequences_cancelled_total {s.cancelled_requests}",
            "# HELP chatforge_moderation_flagged_total Chat questions refused / answers cut by moderation.",
            "# TYPE chatforge_moderation_flagged_total counter",
            *(f'chatforge_moderation_flagged_total{{where="{k}"}} {v}' for k, v in self.flagged.items()),
            "# TYPE chatforge_http_errors_total counter",
        ]
        lines += [f'chatforge_http_errors_total{{status="{k}"}} {v}' for k, v in sorted(self.errors.items())]
        if self.ttft:
            recent = sorted(self.ttft[-1000:])
            lines += ["# HELP chatforge_time_to_first_token_seconds Over the last 1000 requests.",
                      "# TYPE chatforge_time_to_first_token_seconds summary"]
            for q in (0.5, 0.9, 0.99):
                lines.append(f'chatforge_time_to_first_token_seconds{{quantile="{q}"}} '
                             f'{recent[min(len(recent) - 1, int(q * len(recent)))]:.6f}')
        return "\n".join(lines) + "\n"

    # -- helpers --------------------------------------------------------------------------------------------
    def _encode_chat(self, msgs: list[dict], add_generation_prompt: bool = True) -> list[int]:
        try:
            return self.tok.encode_chat(msgs, add_generation_prompt=add_generation_prompt)
        except ChatforgeError as e:
            raise ApiError(400, f"chat template: {e}", "messages", "template_error") from None

    def _max_tokens(self, asked: int | None, prompt_len: int, param: str) -> int:
        if asked is not None and asked > self.opts.max_tokens_limit:
            raise ApiError(400, f"{param}={asked} is over this server's limit of {self.opts.max_tokens_limit}",
                           param, "max_tokens_too_large")
        if asked is not None:
            return asked  # generation still ends at the context ("length")
        room = self.ctx - prompt_len
        return max(1, min(room, self.opts.default_max_tokens or self.opts.max_tokens_limit))

    def _check_prompt(self, ids: list[int], param: str) -> None:
        try:
            check_prompt_ids(ids, self.ctx, self.vocab, "the prompt")
        except PromptError as e:
            raise ApiError(400, str(e), param, e.code) from None

    def _submit(self, prompts: list[list[int]], params: list[SamplingParams], calculator: bool = False) -> Ticket:
        try:
            return self.scheduler.submit(prompts, params, asyncio.get_running_loop(), calculator=calculator)
        except QueueFull as e:
            raise ApiError(429, str(e), code="queue_full") from None
        except SchedulerStopped as e:
            raise ApiError(503, str(e), code="engine_unavailable") from None
        except ChatforgeError as e:
            raise ApiError(400, str(e)) from None

    async def _collect(self, ticket: Ticket, request: Request) -> list[Completion]:
        """Wait for every sequence of `ticket`; if the client disconnects first, cancel it."""
        done: dict[int, Completion] = {}

        async def consume():
            async for ev in ticket.events():
                if ev.finished:
                    done[ev.index] = ev.completion

        task = asyncio.create_task(consume())
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=0.5)
                if not task.done() and await request.is_disconnected():
                    task.cancel()
                    self.scheduler.cancel(ticket)
                    raise ApiError(499, "client disconnected")
            exc = task.exception()
            if exc is not None:
                raise ApiError(500, str(exc), code="generation_failed")
        finally:
            if not task.done():
                task.cancel()
                self.scheduler.cancel(ticket)
        self._record_ttft(ticket)
        return [done[i] for i in range(len(ticket.keys))]

    def _record_ttft(self, ticket: Ticket) -> None:
        if ticket.first_token is not None:
            self.ttft.append(ticket.first_token - ticket.submitted)
            if len(self.ttft) > 5000:
                del self.ttft[:-1000]

    def _stream(self, ticket: Ticket, make_chunks, finish, stop=None) -> StreamingResponse:
        """SSE response over the ticket's events; `make_chunks(ev)` -> chunk dicts; `finish()` -> last chunks;
        `stop()` true: the answer is over before its sequences are (output moderation cut them), cancel them.
        A client that goes away cancels its sequences (the generator is closed)."""
        async def gen():
            completed = False
            try:
                async for batch in ticket.batches():
                    text = "".join(f"data: {sse_json(chunk)}\n\n"
                                   for ev in merge_deltas(batch) for chunk in make_chunks(ev))
                    if text:
                        yield text
                    if stop is not None and stop():
                        self.scheduler.cancel(ticket)  # only the unfinished (cut) sequences are still there
                        break
                for chunk in finish():
                    yield f"data: {sse_json(chunk)}\n\n"
                yield "data: [DONE]\n\n"
                completed = True
            except RuntimeError as e:  # engine fault mid-stream: tell the client in the stream
                err = ApiError(500, str(e), code="generation_failed")
                yield f"data: {json.dumps(err.body())}\n\n"
                completed = True
            finally:
                self._record_ttft(ticket)
                if not completed:
                    self.scheduler.cancel(ticket)

        return _sse(gen())

    # -- chat -----------------------------------------------------------------------------------------------
    def _retrieve(self, req: ChatRequest, msgs: list[dict]) -> tuple[list[dict], list[dict] | None]:
        """(the messages to answer, the retrieved passages or None when retrieval is off)."""
        from chatforge.retrieval.grounding import ground

        if not (req.retrieval if req.retrieval is not None else self.opts.retrieval):
            return msgs, None
        if self.index is None:  # build_server passes None for a missing or empty index
            raise ApiError(400, "retrieval: this server has no retrieval index (chatforge index add --run RUN FILES, "
                                "then restart it)", "retrieval")
        # passages that leave room for an answer of RETRIEVAL_ANSWER_ROOM tokens (a short-context model drops the
        # lowest-ranked ones rather than failing the request)
        return ground(self.index, msgs, self.opts.retrieval_k, self.tok, self.ctx - RETRIEVAL_ANSWER_ROOM)

    async def _chat(self, req: ChatRequest, request: Request):
        from chatforge.retrieval.grounding import citations, last_user_text, source_list

        asked = chat_messages(self.tok, req.messages)
        msgs, hits = self._retrieve(req, asked)
        prompt = self._encode_chat(msgs)
        self._check_prompt(prompt, "messages")
        n_top = req.logprob_count()
        calculator = req.calculator if req.calculator is not None else self.opts.calculator
        if calculator and n_top is not None:
            # the answer holds text the model didn't write (the tool's values): no per-token logprobs to give
            raise ApiError(400, "logprobs: not available with the calculator (send \"calculator\": false)",
                           "logprobs")
        max_tokens = self._max_tokens(req.requested_max_tokens(), len(prompt),
                                      "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens")
        params = [req.sampling(max_tokens, n_top, j) for j in range(req.n)]
        for sp in params:
            check_sampling(sp)
        turn_id = (req.metadata or {}).get("turn_id") if req.store else None
        if turn_id is not None and self.store is None:
            raise ApiError(400, "store: this server has no feedback store", "store")
        if turn_id is not None and not self.store.has_turn(turn_id):  # before streaming starts, not after
            raise ApiError(404, f"no turn {turn_id}", "metadata.turn_id", "not_found")
        check_in, check_out = self._moderation_for(req.moderation)
        record = (lambda comps: self._store_answers(turn_id, msgs, params[0], comps)) if turn_id else None
        if check_in:
            question = last_user_text(asked)
            verdict = self._verdict(self.moderator.score([question])[0], "input")
            if verdict["flagged"]:
                return self._refuse(req, prompt, question, verdict, record)
        mod_info = {"input": verdict} if check_in else None
        ticket = self._submit([prompt] * req.n, params, calculator)
        cid, created, model = new_id("chatcmpl"), now(), self.opts.model_name
        if not req.stream:
            comps = await self._collect(ticket, request)
            verdicts = [self._check_output(c.text) for c in comps] if check_out else [None] * len(comps)
            comps = [replace(c, text="", finish_reason="content_filter") if v and v["flagged"] else c
                     for c, v in zip(comps, verdicts)]
            answer_ids = record(comps) if record else [None] * len(comps)
            choices = []
            for j, c in enumerate(comps):
                cut = c.finish_reason == "content_filter"
                choice = {"index": j, "message": {"role": "assistant", "content": c.text},
                          "logprobs": chat_logprobs(self.tt, c, 0, len(c.token_ids), n_top)
                          if n_top is not None and not cut else None,
                          "finish_reason": c.finish_reason}
                if answer_ids[j]:
                    choice["answer_id"] = answer_ids[j]
                if hits is not None:
                    choice["citations"] = citations(c.text, hits)
                if verdicts[j] is not None:
                    choice["moderation"] = verdicts[j]
                choices.append(choice)
            out_tokens = sum(len(c.token_ids) for c in comps)
            out = {"id": cid, "object": "chat.completion", "created": created, "model": model,
                   "system_fingerprint": None, "choices": choices, "usage": usage(len(prompt), out_tokens)}
            if hits is not None:
                out["sources"] = source_list(hits)
            if mod_info:
                out["moderation"] = mod_info
            return out

        base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": None}
        with_usage = req.include_usage
        started: set[int] = set()
        comps: dict[int, Completion] = {}  # finished choices, and choices cut by output moderation
        shown: dict[int, str] = {}  # text sent so far, per choice (with output moderation)
        token_ids: dict[int, list[int]] = {}
        top_score: dict[int, float] = {}

        def chunk(choices: list[dict]) -> dict:
            c = dict(base, choices=choices)
            if with_usage:
                c["usage"] = None
            return c

        def make_chunks(ev):
            out = []
            j = ev.index
            if j in comps:  # cut by output moderation: the rest of this choice is dropped
                return out
            if j not in started:
                started.add(j)
                first = chunk([{"index": j, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                "finish_reason": None}])
                if hits is not None:
                    first["sources"] = source_list(hits)
                if mod_info:
                    first["moderation"] = mod_info
                out.append(first)
            if check_out:
                token_ids.setdefault(j, []).extend(ev.token_ids)
                if ev.delta:
                    text = shown.get(j, "") + ev.delta
                    score = self.moderator.score([text[-self.moderator.window:]])[0]
                    top_score[j] = max(top_score.get(j, 0.0), score)
                    verdict = self._verdict(score, "output")
                    if verdict["flagged"]:  # withhold this delta and end the choice here
                        c = comps[j] = Completion(prompt, list(token_ids[j]), shown.get(j, ""), "content_filter")
                        final = {"index": j, "delta": {}, "logprobs": None, "finish_reason": "content_filter",
                                 "moderation": verdict}
                        if record:
                            final["answer_id"] = record([c])[0]
                        out.append(chunk([final]))
                        return out
                    shown[j] = text
            lp = None
            if n_top is not None and ev.logprobs:  # the logprobs of this chunk's tokens (held-back text too)
                lp = {"content": [self.tt.chat_entry(t, v, ev.top_logprobs[k] if ev.top_logprobs else None)
                                  for k, (t, v) in enumerate(zip(ev.token_ids, ev.logprobs))]}
            if ev.delta or lp:
                out.append(chunk([{"index": j, "delta": {"content": ev.delta}, "logprobs": lp, "finish_reason": None}]))
            if ev.finished:
                c = comps[j] = ev.completion
                final = {"index": j, "delta": {}, "logprobs": None, "finish_reason": c.finish_reason}
                if record:
                    final["answer_id"] = record([c])[0]
                if hits is not None:
                    final["citations"] = citations(c.text, hits)
                if check_out:
                    final["moderation"] = {"flagged": False, "score": round(top_score.get(j, 0.0), 4)}
                out.append(chunk([final]))
            return out

        def finish():
            if not with_usage:
                return []
            done = sum(len(c.token_ids) for c in comps.values())
            return [dict(base, choices=[], usage=usage(len(prompt) * req.n, done))]

        # once every choice has finished or been cut, stop: the cut ones' rows are freed at once
        return self._stream(ticket, make_chunks, finish, stop=lambda: len(comps) == req.n)

    # -- moderation -----------------------------------------------------------------------------------------
    def _moderation_for(self, asked: bool | None) -> tuple[bool, bool]:
        """(check the question, check the answers) for this request: the server's --moderation mode, unless the
        request says "moderation": false and the server allows that (--moderation-allow-optout)."""
        if self.moderator is None:
            if asked:
                raise ApiError(400, "moderation: this server runs without a moderator (chatforge moderation train "
                                    "--run RUN, then serve with --moderation both)", "moderation")
            return False, False
        if asked is False:
            if not self.opts.moderation_optout:
                raise ApiError(400, "moderation: this server does not let a request switch moderation off",
                               "moderation", "moderation_required")
            return False, False
        mode = self.opts.moderation
        return mode in ("input", "both"), mode in ("output", "both")

    def _verdict(self, score: float, where: str) -> dict:
        """{"flagged", "score"} of a moderator score, counted in /metrics when flagged ("input" / "output")."""
        flagged = score >= self.moderator.threshold
        if flagged:
            self.flagged[where] += 1
        return {"flagged": flagged, "score": round(score, 4)}

    def _check_output(self, text: str) -> dict:
        return self._verdict(self.moderator.output_score(text) if text else 0.0, "output")

    def _refuse(self, req: ChatRequest, prompt: list[int], question: str, verdict: dict, record):
        """The answer to a flagged question: one choice with a short refusal in the question's language,
        finish_reason content_filter; nothing is generated."""
        text = REFUSAL["zh" if is_chinese(question) else "en"]
        cid, created, model = new_id("chatcmpl"), now(), self.opts.model_name
        answer_id = record([Completion(prompt, [], text, "content_filter")])[0] if record else None
        choice = {"index": 0, "logprobs": None, "finish_reason": "content_filter"}
        if answer_id:
            choice["answer_id"] = answer_id
        if not req.stream:
            return {"id": cid, "object": "chat.completion", "created": created, "model": model,
                    "system_fingerprint": None, "choices": [dict(choice, message={"role": "assistant", "content": text})],
                    "usage": usage(len(prompt), 0), "moderation": {"input": verdict}}
        base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "system_fingerprint": None}
        if req.include_usage:
            base["usage"] = None
        chunks = [dict(base, moderation={"input": verdict}, choices=[{"index": 0, "delta": {"role": "assistant",
                                                                                            "content": ""},
                                                                       "logprobs": None, "finish_reason": None}]),
                  dict(base, choices=[{"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}]),
                  dict(base, choices=[dict(choice, delta={})])]
        if req.include_usage:
            chunks.append(dict(base, choices=[], usage=usage(len(prompt), 0)))

        async def gen():
            for c in chunks:
                yield f"data: {sse_json(c)}\n\n"
            yield "data: [DONE]\n\n"

        return _sse(gen())

    def _store_answers(self, turn_id: str, msgs: list[dict], sp: SamplingParams, comps: list[Completion]) -> list[str]:
        settings = {k: v for k, v in asdict(sp).items() if k in ("temperature", "top_p", "top_k", "max_tokens",
                                                                  "presence_penalty", "frequency_penalty",
                                                                  "repetition_penalty", "seed", "stop")}
        try:
            return [self.store.add_answer(turn_id, c.text, "model", self.opts.model_name, settings,
                                          c.finish_reason, msgs) for c in comps]
        except NotFound as e:
            raise ApiError(404, str(e), "metadata.turn_id") from None

    # -- completions ----------------------------------------------------------------------------------------
    async def _complete(self, req: CompletionRequest, request: Request):
        if req.suffix:
            raise ApiError(400, "suffix is not supported", "suffix")
        prompts = completion_prompts(self.tok, req.prompt)
        for p in prompts:
            self._check_prompt(p, "prompt")
        self._max_tokens(req.max_tokens, 0, "max_tokens")
        n_top = req.logprobs
        seqs, params = [], []
        for p in prompts:
            for j in range(req.n):
                sp = req.sampling(req.max_tokens, n_top, j)
                sp.prompt_logprobs = bool(req.echo and n_top is not None)
                check_sampling(sp)
                seqs.append(p)
                params.append(sp)
        ticket = self._submit(seqs, params)
        cid, created, model = new_id("cmpl"), now(), self.opts.model_name
        prompt_tokens = sum(len(p) for p in prompts)

        def text_of(c: Completion) -> str:
            return (self.tok.decode(c.prompt_ids, skip_special=False) if req.echo else "") + c.text

        if not req.stream:
            comps = await self._collect(ticket, request)
            choices = [{"index": i, "text": text_of(c), "finish_reason": c.finish_reason,
                        "logprobs": completion_logprobs(self.tt, c, req.echo, n_top) if n_top is not None else None}
                       for i, c in enumerate(comps)]
            return {"id": cid, "object": "text_completion", "created": created, "model": model,
                    "system_fingerprint": None, "choices": choices,
                    "usage": usage(prompt_tokens * req.n, sum(len(c.token_ids) for c in comps))}

        echoed: set[int] = set()
        total = [0]

        def make_chunks(ev):
            out = []
            text = ev.delta
            if req.echo and ev.index not in echoed:
                echoed.add(ev.index)
                text = self.tok.decode(seqs[ev.index], skip_special=False) + text
            total[0] += len(ev.token_ids)
            if text or ev.finished:
                lp = None
                if ev.finished and n_top is not None:
                    lp = completion_logprobs(self.tt, ev.completion, req.echo, n_top)
                out.append({"id": cid, "object": "text_completion", "created": created, "model": model,
                            "choices": [{"index": ev.index, "text": text, "logprobs": lp,
                                         "finish_reason": ev.completion.finish_reason if ev.finished else None}]})
            return out

        def finish():
            if not req.include_usage:
                return []
            return [{"id": cid, "object": "text_completion", "created": created, "model": model, "choices": [],
                     "usage": usage(prompt_tokens * req.n, total[0])}]

        return self._stream(ticket, make_chunks, finish)


def _join(a: list | None, b: list | None) -> list | None:
    return None if a is None and b is None else (a or []) + (b or [])


def sse_json(chunk: dict) -> str:
    """JSON for one SSE event. ASCII-only: raw U+2028 / U+0085 in model text would be line breaks to clients
    that split the stream with str.splitlines (httpx does), tearing an event in two."""
    return json.dumps(chunk, ensure_ascii=True, separators=(",", ":"))


def merge_deltas(events: list[StreamEvent]) -> list[StreamEvent]:
    """Consecutive events of one sequence -> one event (their text, tokens and logprobs joined; finished if
    the last is). Order across sequences is kept."""
    out: list[StreamEvent] = []
    last: dict[int, int] = {}  # sequence -> position in out of its open (unfinished) event
    for ev in events:
        k = last.get(ev.index)
        if k is not None:
            prev = out[k]
            out[k] = StreamEvent(ev.index, prev.delta + ev.delta, prev.token_ids + ev.token_ids, ev.finished,
                                 ev.completion, _join(prev.logprobs, ev.logprobs),
                                 _join(prev.top_logprobs, ev.top_logprobs))
        else:
            out.append(ev)
            k = len(out) - 1
        if out[k].finished:
            last.pop(ev.index, None)
        else:
            last[ev.index] = k
    return out


def _list(body: dict, key: str) -> list:
    v = body.get(key)
    if not isinstance(v, list):
        raise ApiError(400, f"'{key}' must be a list", key)
    return v


async def _json_body(request: Request) -> dict:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ApiError(400, "the request body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def build_server(run: str | Path, stage: str = "sft", device: str = "cpu", db: str | None = None,
                 max_batch: int = 16, opts: ServeOptions | None = None, feedback: bool = True,
                 engine_in_thread: bool = False, threads: int | None = None) -> Server:
    """A Server for a run's model stage: the engine in its own process (default) or a thread of this one;
    the feedback store in the run unless `db` names another."""
    from chatforge.model import load_config
    from chatforge.run import model_dir, require_run
    from chatforge.serve.scheduler import EngineSpec, load_engine
    from chatforge.serve.store import default_db_url

    run = require_run(run)
    folder = model_dir(run, stage)
    if threads is None and device == "cpu" and not engine_in_thread:
        # leave a core to the HTTP process: on 2 cores, 2 engine threads made 16 streaming clients 1.8x slower
        threads = max(1, (os.cpu_count() or 2) - 1)
    spec = EngineSpec(str(run), stage, device, max_batch, threads)
    opts = opts or ServeOptions()
    if engine_in_thread:
        scheduler = Scheduler.in_thread(load_engine(spec), opts.max_queue)
    else:
        cfg = load_config(folder)
        scheduler = Scheduler.subprocess(spec, cfg.max_seq_len, cfg.vocab_size, opts.max_queue)
    if opts.model_name == "chatforge":
        opts.model_name = f"chatforge-{Path(run).name}-{stage}"
    store = FeedbackStore(db or default_db_url(run)) if feedback else None
    from chatforge.retrieval.index import RetrievalIndex

    index = RetrievalIndex.load_nonempty(run) if opts.retrieval else RetrievalIndex.load(run)
    return Server(scheduler, Tokenizer.load(folder), store, opts, index if index.docs else None,
                  _moderator(run, opts))


def _moderator(run: Path, opts: ServeOptions):
    """The run's moderator for `opts.moderation` (resolved in place: None -> both or off), or None when off."""
    from chatforge.safety import moderation

    if opts.moderation is None:
        opts.moderation = "both" if moderation.exists(run) else "off"
    if opts.moderation not in MODERATION_MODES:
        raise ChatforgeError(f"--moderation {opts.moderation!r}: expected one of {', '.join(MODERATION_MODES)}")
    if opts.moderation == "off":
        if opts.moderation_threshold is not None:
            raise ChatforgeError("--moderation-threshold given, but moderation is off "
                                 f"({'--moderation off' if moderation.exists(run) else 'the run has no moderator'})")
        return None
    if not moderation.exists(run):
        raise ChatforgeError(f"--moderation {opts.moderation}: {moderation.folder(run)} holds no trained moderator; "
                             f"train one with `chatforge moderation train --run {run}` or serve with --moderation off")
    return moderation.Moderator.load(run, opts.moderation_threshold)
