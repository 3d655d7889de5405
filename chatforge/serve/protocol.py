"""OpenAI's request and response shapes: request bodies -> (prompt ids, SamplingParams); engine output ->
`chat.completion`, `chat.completion.chunk`, `text_completion` objects.

Unknown request fields are ignored (clients send many we don't use); known fields with a wrong type or an
out-of-range value are errors (HTTP 400, OpenAI's error shape, `param` naming the field).
vLLM's extensions `top_k`, `repetition_penalty` and `ignore_eos` are accepted too.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from chatforge import ChatforgeError
from chatforge.engine import Completion, SamplingParams
from chatforge.tokenizer import Tokenizer

MAX_N = 16
MAX_STOP = 16


class ApiError(Exception):
    """An error the client caused (or a limit it hit), reported as {"error": {...}} with `status`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type_ or {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                              413: "invalid_request_error", 429: "rate_limit_error",
                              503: "service_unavailable"}.get(status, "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens whatever the model says (benchmarks)

    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP:
            raise ApiError(400, f"at most {MAX_STOP} stop strings", "stop")
        if any(s == "" for s in stops):
            raise ApiError(400, "stop strings must be non-empty", "stop")
        return stops

    def sampling(self, max_tokens: int, logprobs: int | None, seed_offset: int) -> SamplingParams:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            top_k=self.top_k or 0,
            repetition_penalty=self.repetition_penalty or 1.0,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            seed=None if self.seed is None else self.seed + seed_offset,  # n choices differ, reproducibly
            stop=self.stops(), logprobs=logprobs, ignore_eos=self.ignore_eos)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatRequest(_Sampling):
    messages: list[dict[str, Any]] = Field(..., min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # OpenAI's `store` + `metadata`: with store=true and metadata.turn_id (from /feedback), each answer is
    # recorded in the feedback store and its id returned in the choice as `answer_id`.
    store: bool = False
    metadata: dict[str, str] | None = None
    # chatforge's own: answer from the run's retrieval index (None: the server's --retrieval default); the
    # response then lists `sources` and each choice the `citations` its answer makes.
    retrieval: bool | None = None
    # chatforge's own: false switches moderation off for this request (only with --moderation-allow-optout); strict,
    # so "no" is a 400 rather than read as false
    moderation: StrictBool | None = None
    # chatforge's own: the calculator answers the model's <<calc: EXPR>> calls (None: the server's --calculator);
    # strict like moderation
    calculator: StrictBool | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def logprob_count(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", "top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int = Field(16, ge=0)
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    suffix: str | None = None


def chat_messages(tok: Tokenizer, raw: list[dict]) -> list[dict]:
    """Validate OpenAI messages into {role, content: str}; text content parts are joined."""
    out = []
    for i, m in enumerate(raw):
        role, content = m.get("role"), m.get("content")
        if role not in ("system", "user", "assistant"):
            raise ApiError(400, f"messages[{i}].role must be system, user or assistant (got {role!r})",
                           f"messages[{i}].role")
        if isinstance(content, list):
            parts = []
            for j, part in enumerate(content):
                if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ApiError(400, f"messages[{i}].content[{j}]: only text parts are supported",
                                   f"messages[{i}].content")
                parts.append(part["text"])
            content = "".join(parts)
        if content is None and role == "assistant":
            content = ""
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts",
                           f"messages[{i}].content")
        out.append({"role": role, "content": content})
    return out


def completion_prompts(tok: Tokenizer, prompt) -> list[list[int]]:
    """The four prompt forms of /v1/completions -> token id lists."""
    if isinstance(prompt, str):
        return [tok.encode(prompt)]
    if not prompt:
        raise ApiError(400, "prompt is empty", "prompt")
    if all(isinstance(p, str) for p in prompt):
        return [tok.encode(p) for p in prompt]
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]
    return [list(p) for p in prompt]


# -- responses ---------------------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


class TokenText:
    """Token ids -> the strings and bytes OpenAI's logprobs objects carry."""

    def __init__(self, tok: Tokenizer, vocab: int):
        self.bytes = tok.token_bytes(pad_to=vocab)  # what each token adds to the text
        # special tokens add no text (b""), but are shown by name ("<|end|>")
        self.shown = [b.decode("utf-8", errors="replace") if b else tok.decode([i], skip_special=False)
                      for i, b in enumerate(self.bytes)]

    def text(self, i: int) -> str:
        return self.shown[i]

    def chat_entry(self, i: int, lp: float, top: dict[int, float] | None) -> dict:
        return {"token": self.text(i), "logprob": lp, "bytes": list(self.bytes[i]),
                "top_logprobs": [{"token": self.text(t), "logprob": v, "bytes": list(self.bytes[t])}
                                 for t, v in (top or {}).items()]}

    def top_dict(self, top: dict[int, float] | None) -> dict[str, float] | None:
        if top is None:
            return None
        out: dict[str, float] = {}
        for t, v in top.items():  # two ids can share a display string (partial UTF-8): keep the likelier
            out[self.text(t)] = max(v, out.get(self.text(t), float("-inf")))
        return out


def chat_logprobs(tt: TokenText, comp: Completion, start: int, end: int, n_top: int) -> dict:
    """OpenAI chat `logprobs.content` for generated tokens start..end (a closing stop token has none)."""
    entries = []
    for k in range(start, min(end, len(comp.token_ids))):
        top = comp.top_logprobs[k] if n_top and k < len(comp.top_logprobs) else None
        entries.append(tt.chat_entry(comp.token_ids[k], comp.logprobs[k], top))
    return {"content": entries}


def completion_logprobs(tt: TokenText, comp: Completion, echo: bool, n_top: int) -> dict:
    """OpenAI legacy `logprobs`: tokens, token_logprobs, top_logprobs, text_offset (prompt first with echo)."""
    ids: list[int] = []
    lps: list[float | None] = []
    tops: list[dict | None] = []
    if echo:
        ids += comp.prompt_ids
        lps += comp.prompt_logprobs
        tops += comp.prompt_top_logprobs if n_top else [None] * len(comp.prompt_ids)
    # the stop token that ended the answer counts too (as in vLLM): lm-eval reads the generated token's entry
    gen = comp.token_ids + ([comp.stop_token_id] if comp.stop_token_id is not None else [])
    k = min(len(gen), len(comp.logprobs))
    ids += gen[:k]
    lps += comp.logprobs[:k]
    tops += comp.top_logprobs[:k] if n_top else [None] * k
    tokens = [tt.text(i) for i in ids]
    offsets, pos = [], 0
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": [tt.top_dict(t) for t in tops],
            "text_offset": offsets}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def check_sampling(sp: SamplingParams) -> None:
    """SamplingParams.validate as an HTTP 400."""
    try:
        sp.validate()
    except ChatforgeError as e:
        raise ApiError(400, str(e)) from None
