"""The generation engine: one implementation for the terminal chat, the API server, PPO rollouts and eval.

    from chatforge.engine import Engine, SamplingParams
    engine = Engine(model, tokenizer)
    out = engine.generate([prompt_ids], SamplingParams(max_tokens=64, temperature=0.7, top_p=0.9, stop=["\\n"]))
    for event in engine.stream([prompt_ids], params): print(event.delta, end="")

How it works: requests sit in rows of one KV cache with a length per row. Newly admitted requests are
prefilled together into free rows (right-padded; each row keeps its real length); then all active rows
decode together, one token per step (batched decode). Rows
finish independently (eos / stop token / stop string -> "stop"; max_tokens or the context -> "length"), and
a waiting request takes the freed row at once (continuous batching, `max_batch` rows).

Sampling per request: temperature (0 = greedy), top-k, top-p, repetition penalty (CTRL-style, over prompt
and output), presence/frequency penalties (OpenAI-style, over output), and its own seeded generator, so
the same seed gives the same text whatever else is in the batch. Logprobs are of the model's raw
distribution (log-softmax of the logits, before penalties and temperature), for the chosen token and the
top-N alternatives; prompt logprobs come from the prefill. Streaming never emits half a UTF-8 character,
nor text that may turn out to be the start of a stop string (the stop text itself is never returned).
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from chatforge import ChatforgeError
from chatforge.model import GPT, KVCache
from chatforge.tokenizer import Tokenizer


@dataclass
class SamplingParams:
    max_tokens: int = 128
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    logprobs: int | None = None  # None = off; N >= 0 = chosen token's logprob + top-N alternatives
    prompt_logprobs: bool = False
    ignore_eos: bool = False  # only the request's own stops end it (benchmarks: fixed-length answers)

    def validate(self) -> None:
        problems = []
        if self.max_tokens < 0:  # 0: score the prompt only (prompt_logprobs), generate nothing
            problems.append(f"max_tokens={self.max_tokens} (must be >= 0)")
        if self.temperature < 0:
            problems.append(f"temperature={self.temperature} (must be >= 0)")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p={self.top_p} (must be in (0, 1])")
        if self.top_k < 0:
            problems.append(f"top_k={self.top_k} (must be >= 0)")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty={self.repetition_penalty} (must be > 0)")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            problems.append(f"logprobs={self.logprobs} (must be 0..20)")
        if any(not s for s in self.stop):
            problems.append("stop strings must be non-empty")
        if problems:
            raise ChatforgeError("invalid sampling parameters: " + "; ".join(problems))


@dataclass
class Completion:
    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None  # "stop" | "length"
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[dict[int, float]] = field(default_factory=list)
    prompt_logprobs: list[float | None] = field(default_factory=list)  # None for the first prompt token
    prompt_top_logprobs: list[dict[int, float] | None] = field(default_factory=list)  # with logprobs=N > 0
    stop_token_id: int | None = None  # the eos / <|end|> / stop token that ended it (not in token_ids or text)
    stop_string: str | None = None  # the stop string that ended it (not in text)


@dataclass
class StreamEvent:
    index: int  # which request
    delta: str  # new text, safe to show
    token_ids: list[int]  # tokens generated this step for this request (0 or 1)
    finished: bool = False
    completion: Completion | None = None  # set on the last event of a request
    logprobs: list[float] | None = None  # with logprobs: those of `token_ids` (a closing stop token has none)
    top_logprobs: list[dict[int, float]] | None = None  # with logprobs=N > 0


@dataclass
class _Row:
    index: int
    params: SamplingParams
    out: Completion
    generator: torch.Generator
    counts: torch.Tensor  # occurrences of each token in the output (penalties)
    seen: torch.Tensor  # bool: token occurs in prompt or output (repetition penalty)
    logits: torch.Tensor | None = None  # next-token logits
    raw_logprobs: torch.Tensor | None = None  # log-softmax of `logits`, when logprobs are asked for
    stop_ids: frozenset[int] = frozenset()  # engine defaults + the request's own stop tokens
    emitted: int = 0  # characters of text already streamed
    # incremental UTF-8 decoding: holds back the bytes of a character that isn't complete yet
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))

    @property
    def penalised(self) -> bool:
        sp = self.params
        return sp.repetition_penalty != 1.0 or bool(sp.presence_penalty) or bool(sp.frequency_penalty)


def _safe_prefix_len(text: str, stops: list[str]) -> int:
    """Length of the prefix of `text` that is safe to stream: without any suffix that could still grow
    into a stop string. (Incomplete UTF-8 characters never reach `text`: the incremental decoder holds
    their bytes back.)"""
    end = len(text)
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, end), 0, -1):
            if text[end - k:end] == s[:k]:
                hold = max(hold, k)
                break
    return end - hold


class PromptError(ChatforgeError):
    """A prompt the model can't answer; `code` says why (empty_prompt, context_length_exceeded, invalid_token_id)."""

    def __init__(self, message: str, code: str):
        super().__init__(message)
        self.code = code


def check_prompt_ids(prompt: list[int], ctx: int, vocab: int, what: str = "prompt") -> None:
    """Raise PromptError if a model with context `ctx` and `vocab` ids can't answer `prompt`."""
    if not prompt:
        raise PromptError(f"{what} is empty", "empty_prompt")
    if len(prompt) >= ctx:
        raise PromptError(f"{what} has {len(prompt)} tokens; the model's context is {ctx}, so at most "
                          f"{ctx - 1} prompt tokens leave room for an answer", "context_length_exceeded")
    if max(prompt) >= vocab or min(prompt) < 0:
        raise PromptError(f"{what} has a token id outside the vocabulary (0..{vocab - 1})", "invalid_token_id")


def check_prompt(prompt: list[int], params: SamplingParams, ctx: int, vocab: int, what: str = "prompt") -> None:
    """Raise ChatforgeError if this request can't be answered (bad params or a bad prompt)."""
    params.validate()
    check_prompt_ids(prompt, ctx, vocab, what)


DECODE_MODES = ("dynamic", "static", "graph")


class Engine:
    """`decode_mode`: "dynamic" steps only the active rows and attends to the filled part of the cache (best
    on CPU); "static" steps all rows with fixed shapes; "graph" records that static step once as a CUDA graph
    and replays it (GPU: one launch per token instead of hundreds). Default: graph on CUDA, else dynamic."""

    def __init__(self, model: GPT, tokenizer: Tokenizer, max_batch: int = 16, decode_mode: str | None = None):
        self.model, self.tok, self.max_batch = model.eval(), tokenizer, max_batch
        self.device = next(model.parameters()).device
        self.decode_mode = decode_mode or ("graph" if self.device.type == "cuda" else "dynamic")
        if self.decode_mode not in DECODE_MODES:
            raise ChatforgeError(f"decode_mode must be one of {DECODE_MODES}, not {self.decode_mode!r}")
        if self.decode_mode == "graph" and self.device.type != "cuda":
            raise ChatforgeError("decode_mode 'graph' needs a CUDA device")
        self._graphs: dict[int, tuple] = {}  # rows -> (cache, graph, ids buffer, logits buffer)
        self.dtype = next(model.parameters()).dtype
        self.vocab = model.cfg.vocab_size
        self.default_stop_ids = (tokenizer.eos_id, tokenizer.end_id)
        self.token_bytes = tokenizer.token_bytes(pad_to=self.vocab)

    # -- public API -----------------------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]) -> list[Completion]:
        done: dict[int, Completion] = {}
        for ev in self.stream(prompts, params):
            if ev.finished:
                done[ev.index] = ev.completion
        return [done[i] for i in range(len(prompts))]

    def stream(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]) -> Iterator[StreamEvent]:
        plist = params if isinstance(params, list) else [params] * len(prompts)
        if len(plist) != len(prompts):
            raise ChatforgeError(f"{len(prompts)} prompts but {len(plist)} sampling parameter sets")
        batch = self.batch(max(1, min(self.max_batch, len(prompts))))
        for i, (p, sp) in enumerate(zip(prompts, plist)):
            batch.add(i, p, sp)
        while batch.busy:
            yield from batch.step()

    def batch(self, n_rows: int | None = None) -> GenerationBatch:
        """A running batch of `n_rows` cache rows (default `max_batch`) that requests can join at any step:
        what a server keeps open for its whole life."""
        return GenerationBatch(self, n_rows or self.max_batch)

    def check_prompt(self, prompt: list[int], params: SamplingParams, what: str = "prompt") -> None:
        check_prompt(prompt, params, self.model.cfg.max_seq_len, self.vocab, what)

    def _static_step(self, cache: KVCache, ids: torch.Tensor) -> torch.Tensor:
        """One token for every row, shape-static; replayed from a CUDA graph in graph mode. -> (rows, V) fp32."""
        cache.sync_positions()
        if self.decode_mode != "graph":
            return self.model(ids, cache=cache)[0][:, -1].float()
        _, graph, ids_buf, logits_buf = self._graph_for(ids.shape[0])
        ids_buf.copy_(ids)
        graph.replay()
        cache.advance()
        return logits_buf[:, -1].float().clone()  # the buffer is overwritten by the next replay

    def _graph_for(self, n_rows: int) -> tuple:
        """The recorded decode step for `n_rows` rows (recorded on first use, with its own static cache)."""
        if n_rows not in self._graphs:
            cache = KVCache(self.model.cfg, n_rows, device=self.device, dtype=self.dtype, static=True)
            ids = torch.zeros(n_rows, 1, dtype=torch.long, device=self.device)
            cache.sync_positions()
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):  # warm-up off the main stream, as graph capture requires
                for _ in range(2):
                    self.model(ids, cache=cache)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                logits, _ = self.model(ids, cache=cache)
            cache.reset()
            self._graphs[n_rows] = (cache, graph, ids, logits)
        return self._graphs[n_rows]

    # -- steps ------------------------------------------------------------------------------------------------
    def _prefill(self, cache: KVCache, batch: list[tuple[int, int, list[int], SamplingParams]]) -> dict[int, _Row]:
        """Prefill newly admitted requests together: prompts right-padded into one forward, then each row's
        length set to its real prompt length (the padding's keys are masked out and later overwritten)."""
        slots = [b[0] for b in batch]
        width = max(len(b[2]) for b in batch)
        ids = torch.tensor([p + [0] * (width - len(p)) for _, _, p, _ in batch], device=self.device)
        rows = torch.tensor(slots, device=self.device)
        cache.reset(slots)
        logits, _ = self.model(ids, cache=cache, rows=rows)
        cache.set_lengths(slots, [len(b[2]) for b in batch])
        out: dict[int, _Row] = {}
        for b, (slot, index, prompt, sp) in enumerate(batch):
            n = len(prompt)
            comp = Completion(prompt_ids=list(prompt))
            if sp.prompt_logprobs:
                lp = torch.log_softmax(logits[b, :n - 1].float(), -1)
                comp.prompt_logprobs = [None] + lp.gather(1, ids[b, 1:n, None]).squeeze(1).tolist()
                if sp.logprobs:
                    vals, idx = lp.topk(sp.logprobs, dim=-1)
                    comp.prompt_top_logprobs = [None] + [dict(zip(i, v)) for i, v in zip(idx.tolist(), vals.tolist())]
            gen = torch.Generator(device=self.device)
            gen.manual_seed(sp.seed if sp.seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
            seen = torch.zeros(self.vocab, dtype=torch.bool, device=self.device)
            seen[ids[b, :n]] = True
            out[slot] = _Row(index, sp, comp, gen, torch.zeros(self.vocab, device=self.device), seen,
                             logits[b, n - 1].float(),
                             stop_ids=frozenset(sp.stop_token_ids) if sp.ignore_eos else
                             frozenset(self.default_stop_ids) | frozenset(sp.stop_token_ids))
        return out

    def _choose(self, active: dict[int, _Row]) -> dict[int, int]:
        """The next token of every active row, in batched ops: penalties (per row, only where asked), then
        greedy rows take the argmax and sampling rows go through temperature, top-k, top-p and an
        inverse-CDF draw with one uniform number from the row's own generator. Each row's result depends only
        on its logits and its generator, so a seed gives the same text alone or in any batch (tested)."""
        slots = list(active)
        rows = [active[s] for s in slots]
        want_lp = [i for i, r in enumerate(rows) if r.params.logprobs is not None]
        raw = torch.stack([r.logits for r in rows])  # (B, V) fp32
        if want_lp:
            lps = torch.log_softmax(raw[want_lp], -1)
            for j, i in enumerate(want_lp):
                rows[i].raw_logprobs = lps[j]
        logits = torch.stack([self._penalised(r) for r in rows]) if any(r.penalised for r in rows) else raw
        temps = [r.params.temperature for r in rows]
        out: dict[int, int] = {}
        greedy = [i for i, t in enumerate(temps) if t == 0]
        if greedy:
            for i, t in zip(greedy, logits[greedy].argmax(-1).tolist()):
                out[slots[i]] = t
        sampled = [i for i, t in enumerate(temps) if t > 0]
        if not sampled:
            return out
        dev = logits.device
        x = logits[sampled] / torch.tensor([temps[i] for i in sampled], device=dev)[:, None]
        ks = torch.tensor([min(rows[i].params.top_k, x.shape[1]) for i in sampled], device=dev)
        if bool((ks > 0).any()):
            top = torch.topk(x, int(ks.max()), dim=-1).values
            kth = top.gather(1, (ks.clamp(min=1) - 1)[:, None])
            kth = torch.where(ks[:, None] > 0, kth, torch.full_like(kth, float("-inf")))
            x = x.masked_fill(x < kth, float("-inf"))
        ps = [rows[i].params.top_p for i in sampled]
        if any(p < 1.0 for p in ps):
            probs_sorted, order = torch.softmax(x, -1).sort(dim=-1, descending=True)
            limit = torch.tensor([p if p < 1.0 else float("inf") for p in ps], device=dev)[:, None]
            drop = probs_sorted.cumsum(-1) - probs_sorted >= limit  # keep the smallest prefix reaching top_p
            x = x.masked_fill(torch.zeros_like(drop).scatter(1, order, drop), float("-inf"))
        cdf = torch.softmax(x, -1).cumsum(-1)
        u = torch.stack([torch.rand((), generator=rows[i].generator, device=dev) for i in sampled])
        picked = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp_(max=x.shape[1] - 1)
        for i, t in zip(sampled, picked[:, 0].tolist()):
            out[slots[i]] = t
        return out

    @staticmethod
    def _penalised(row: _Row) -> torch.Tensor:
        sp, logits = row.params, row.logits
        if sp.repetition_penalty != 1.0:
            pen = torch.where(logits > 0, logits / sp.repetition_penalty, logits * sp.repetition_penalty)
            logits = torch.where(row.seen, pen, logits)
        if sp.presence_penalty or sp.frequency_penalty:
            logits = logits - sp.presence_penalty * (row.counts > 0) - sp.frequency_penalty * row.counts
        return logits

    def _append(self, row: _Row, tok_id: int, ctx: int) -> StreamEvent:
        sp, out = row.params, row.out
        ev_lp = ev_top = None
        if sp.logprobs is not None:
            lp = row.raw_logprobs
            out.logprobs.append(float(lp[tok_id]))
            ev_lp = [out.logprobs[-1]]
            if sp.logprobs:
                vals, idx = lp.topk(sp.logprobs)
                out.top_logprobs.append(dict(zip(idx.tolist(), vals.tolist())))
                ev_top = [out.top_logprobs[-1]]
        if tok_id in row.stop_ids:
            out.stop_token_id = tok_id
            return self._finish(row, "stop", [])
        out.token_ids.append(tok_id)
        if row.penalised:  # only penalties read these
            row.counts[tok_id] += 1
            row.seen[tok_id] = True
        before = len(out.text)
        out.text += row.decoder.decode(self.token_bytes[tok_id])
        text = out.text
        for s in sp.stop:
            # only the new tail can complete a stop string: search from just before it
            pos = text.find(s, max(0, min(row.emitted, before) - len(s)))
            if pos != -1:
                out.text, out.stop_string = text[:pos], s
                return self._finish(row, "stop", [tok_id], ev_lp, ev_top)
        if len(out.token_ids) >= sp.max_tokens or len(out.prompt_ids) + len(out.token_ids) >= ctx:
            return self._finish(row, "length", [tok_id], ev_lp, ev_top)  # an incomplete last character is dropped
        safe = _safe_prefix_len(text, sp.stop)
        delta = text[row.emitted:safe] if safe > row.emitted else ""
        row.emitted = max(row.emitted, safe)
        return StreamEvent(row.index, delta, [tok_id], logprobs=ev_lp, top_logprobs=ev_top)

    def _finish(self, row: _Row, reason: str, new_ids: list[int], lp: list[float] | None = None,
                top: list[dict] | None = None) -> StreamEvent:
        out = row.out
        out.finish_reason = reason
        delta = out.text[row.emitted:]
        row.emitted = len(out.text)
        return StreamEvent(row.index, delta, new_ids, finished=True, completion=out, logprobs=lp, top_logprobs=top)


class GenerationBatch:
    """Rows of one KV cache shared by requests that come and go: `add` queues a request (it is prefilled
    into a free row at the next step), `step` advances every active row by one token and returns the
    events, `cancel` drops a request at once and frees its row. Not thread-safe: one thread drives it."""

    def __init__(self, engine: Engine, n_rows: int):
        self.engine, self.n_rows = engine, n_rows
        self.static = engine.decode_mode != "dynamic"
        if engine.decode_mode == "graph":  # the recorded graph reads and writes this very cache: keep it
            self.cache = engine._graph_for(n_rows)[0]
            self.cache.reset()
        else:
            self.cache = KVCache(engine.model.cfg, n_rows, device=engine.device, dtype=engine.dtype,
                                 static=self.static)
        self.waiting: list[tuple[int, list[int], SamplingParams]] = []
        self.free = list(range(n_rows))
        self.active: dict[int, _Row] = {}  # cache row -> request state

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.active)

    @property
    def running(self) -> int:
        return len(self.active)

    def add(self, key: int, prompt: list[int], params: SamplingParams, front: bool = False) -> None:
        """Queue a request; `front`: ahead of the others waiting (an answer that is already under way)."""
        self.engine.check_prompt(prompt, params, f"prompt {key}")
        self.waiting.insert(0 if front else len(self.waiting), (key, list(prompt), params))

    def cancel(self, key: int) -> bool:
        """Forget request `key` (waiting or running); its row is free for the next request."""
        before = len(self.waiting)
        self.waiting = [w for w in self.waiting if w[0] != key]
        if len(self.waiting) != before:
            return True
        for slot, row in list(self.active.items()):
            if row.index == key:
                del self.active[slot]
                self.free.append(slot)
                return True
        return False

    @torch.inference_mode()  # lighter than no_grad: no version counters or view tracking per op
    def step(self) -> list[StreamEvent]:
        eng, cache, active = self.engine, self.cache, self.active
        ctx = eng.model.cfg.max_seq_len
        events: list[StreamEvent] = []
        admitted = []
        while self.waiting and self.free:  # continuous batching: new requests take free rows as soon as they exist
            key, prompt, sp = self.waiting.pop(0)
            admitted.append((self.free.pop(0), key, prompt, sp))
        if admitted:
            for slot, row in eng._prefill(cache, admitted).items():
                if row.params.max_tokens == 0:  # scoring only (prompt logprobs): done after the prefill
                    events.append(eng._finish(row, "length", []))
                    self.free.append(slot)
                else:
                    active[slot] = row
        finished = []
        chosen = eng._choose(active) if active else {}
        for slot, row in active.items():
            ev = eng._append(row, chosen[slot], ctx)
            events.append(ev)
            if ev.finished:
                finished.append(slot)
        for slot in finished:
            del active[slot]
            self.free.append(slot)
        if active:
            self._forward()
        return events

    def _forward(self) -> None:
        """Next-token logits for every active row from its last token."""
        eng, cache, active = self.engine, self.cache, self.active
        slots = sorted(active)
        if self.static:  # every row steps; free rows are parked at position 0 (overwritten when they are reused)
            last_ids = [active[s].out.token_ids[-1] if s in active else 0 for s in range(self.n_rows)]
            cache.set_lengths(self.free, [0] * len(self.free))
            last = eng._static_step(cache, torch.tensor(last_ids, device=eng.device)[:, None])
            for s in slots:
                active[s].logits = last[s]
            return
        ids = torch.tensor([[active[s].out.token_ids[-1]] for s in slots], device=eng.device)
        rows = None if slots == list(range(self.n_rows)) else torch.tensor(slots, device=eng.device)
        logits, _ = eng.model(ids, cache=cache, rows=rows)
        last = logits[:, -1].float()
        for b, s in enumerate(slots):
            active[s].logits = last[b]
