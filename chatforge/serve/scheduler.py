"""The server's scheduler: one engine loop drives one running `GenerationBatch`; requests from any number of
HTTP handlers join it between decode steps (continuous batching) and leave it when they finish or their
client goes away.

    sched = Scheduler.subprocess(EngineSpec(run, "sft", "cuda", max_batch=16), tok, max_queue=64)
    sched = Scheduler.in_thread(engine, max_queue=64)            # same API, engine in this process
    sched.start()
    ticket = sched.submit([prompt_ids], [SamplingParams(...)], loop)   # raises QueueFull; calculator=True: tool
    async for ev in ticket.events(): ...                                # StreamEvent, in order
    sched.cancel(ticket)                                                # frees its rows

Where the engine runs. `subprocess` (the server's default): its own process, so the decode loop and the
HTTP event loop never wait for each other's GIL (in one process, under load, the engine thread spent ~40%
of its time waiting for it); commands go down a pipe, one message of events per step comes back.
`in_thread`: a thread of this process (tests, embedding the server in a notebook). Either way a decode
step is one blocking call kept off the event loop that serves other clients, streaming, /health, /metrics.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import multiprocessing as mp
import queue
import signal
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field

from chatforge import ChatforgeError
from chatforge.engine import Engine, SamplingParams, StreamEvent, check_prompt
from chatforge.tokenizer import Tokenizer
from chatforge.tools.loop import CalculatorAnswer


class QueueFull(ChatforgeError):
    """More sequences than running rows + waiting places: the client should retry later (HTTP 429)."""


class SchedulerStopped(ChatforgeError):
    """The scheduler is shutting down or crashed (HTTP 503)."""


@dataclass
class EngineSpec:
    """What the engine process loads: a run's model stage."""
    run: str
    stage: str
    device: str = "cpu"
    max_batch: int = 16
    threads: int | None = None  # torch CPU threads in the engine process (None: torch's default)


def load_engine(spec: EngineSpec) -> Engine:
    import torch

    from chatforge.model import load_model
    from chatforge.run import model_dir

    if spec.threads:
        torch.set_num_threads(spec.threads)
    folder = model_dir(spec.run, spec.stage)
    model = load_model(folder, spec.device)
    if spec.device.startswith("cuda"):
        model = model.to(torch.bfloat16)
    return Engine(model, Tokenizer.load(folder), max_batch=spec.max_batch)


@dataclass
class Ticket:
    """One HTTP request's sequences (n choices × prompts) in the running batch."""
    keys: list[int]
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    submitted: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    remaining: int = 0

    async def events(self):
        """StreamEvents with `index` = position in this ticket's list (0..len(keys)-1), until all finish.
        A fault in the engine arrives as an exception."""
        async for batch in self.batches():
            for ev in batch:
                yield ev

    async def batches(self):
        """The events in lists: everything that arrived since the last list. A busy server thus writes one
        stream chunk for several tokens instead of one per token (fewer JSON encodes and socket writes,
        exactly when they would slow everyone down); an idle one still streams token by token."""
        while self.remaining:
            batch = [await self.queue.get()]
            while not self.queue.empty():
                batch.append(self.queue.get_nowait())
            for ev in batch:
                if isinstance(ev, BaseException):
                    raise ev
                if ev.finished:
                    self.remaining -= 1
            yield batch


def engine_loop(engine: Engine, next_commands, emit) -> None:
    """Step the running batch while it has work; between steps apply commands ("add" [(key, prompt,
    params, calculator)], "cancel" [keys], "stop"). `next_commands(block)` returns a list (waiting when
    `block`); `emit(events, running, fault)` reports each step."""
    batch = engine.batch()
    tools: dict[int, CalculatorAnswer] = {}  # keys whose <<calc: ...>> calls the calculator answers
    while True:
        for kind, payload in next_commands(not batch.busy):
            if kind == "stop":
                return
            if kind == "add":
                for key, prompt, sp, calculator in payload:
                    if calculator:
                        tools[key] = CalculatorAnswer(prompt, sp, engine.model.cfg.max_seq_len)
                        sp = tools[key].round_params()
                    batch.add(key, prompt, sp)
            elif kind == "cancel":
                for key in payload:
                    batch.cancel(key)
                    tools.pop(key, None)
                if not batch.busy:  # nothing will step: report the emptied batch now
                    emit([], 0, None)
        if not batch.busy:
            continue
        try:
            events = batch.step()
        except Exception as e:  # a real fault: fail the requests in flight, keep serving new ones
            detail = "".join(traceback.format_exception_only(type(e), e)).strip()
            traceback.print_exc()
            batch, tools = engine.batch(), {}
            emit([], 0, detail)
            continue
        if tools:
            events = [_calculator_round(engine, batch, tools, ev) for ev in events]
        emit(events, batch.running, None)


def _calculator_round(engine: Engine, batch, tools: dict[int, CalculatorAnswer], ev: StreamEvent) -> StreamEvent:
    """A finished round of a calculator answer stopped at an open call: append the tool's value (sent to the
    client as part of this event's text) and queue the next round under the same key, so the request's
    ticket, cancellation and streaming never see the rounds. Otherwise the event, with the whole answer."""
    answer = tools.get(ev.index)
    if answer is None or not ev.finished:
        return ev
    tool = ""
    try:
        tool, more = answer.take(ev.completion, engine.tok)
        if more:
            # first in line: a half-written answer goes on before requests that have not started
            batch.add(ev.index, answer.round_ids, answer.round_params(), front=True)
            return dataclasses.replace(ev, finished=False, completion=None, delta=ev.delta + tool)
    except Exception:  # noqa: BLE001 - one answer's tool round must not fail the other requests in the batch
        traceback.print_exc()
        answer.cut = answer.cut or bool(tool)  # could not be queued: ends with what it has, as "length"
    del tools[ev.index]
    return dataclasses.replace(ev, completion=answer.final(ev.completion), delta=ev.delta + tool)


def _engine_process_main(spec: EngineSpec, conn) -> None:
    """Entry point of the engine process: load, say ready (with the model's limits), then serve the pipe."""
    # Ctrl-C reaches the whole process group: the server shuts down and then stops us with a "stop" command
    # (requests in flight finish cleanly) instead of this process dying under it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        engine = load_engine(spec)
    except Exception as e:  # noqa: BLE001 - reported to the parent, which refuses to start
        conn.send(("failed", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", {"ctx": engine.model.cfg.max_seq_len, "vocab": engine.vocab}))

    def next_commands(block: bool) -> list:
        if not block and not conn.poll():
            return []
        if block and not conn.poll(0.5):
            return []
        cmds = [conn.recv()]
        while conn.poll():
            cmds.append(conn.recv())
        return cmds

    try:
        engine_loop(engine, next_commands, lambda events, running, fault: conn.send(("events", events, running, fault)))
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass  # the server went away


class Scheduler:
    def __init__(self, ctx: int, vocab: int, max_running: int, max_queue: int = 64):
        self.ctx, self.vocab = ctx, vocab
        self.max_running, self.max_queue = max_running, max_queue
        self._ids = itertools.count()
        self._tickets: dict[int, tuple[Ticket, int]] = {}  # engine key -> (ticket, position in ticket)
        self._lock = threading.Lock()  # guards the tickets and counters (handlers, /metrics, the reader)
        self._pending = 0  # sequences submitted and not finished / cancelled
        self._running = 0
        self._stop = False
        self.fault: str | None = None
        # counters for /metrics
        self.generated_tokens = 0
        self.prompt_tokens = 0
        self.finished_requests = 0
        self.cancelled_requests = 0
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) of recent steps, for tokens/s
        self._engine: Engine | None = None
        self._spec: EngineSpec | None = None
        self._thread: threading.Thread | None = None
        self._proc = None
        self._conn = None
        self._commands: queue.SimpleQueue = queue.SimpleQueue()

    @classmethod
    def in_thread(cls, engine: Engine, max_queue: int = 64) -> Scheduler:
        s = cls(engine.model.cfg.max_seq_len, engine.vocab, engine.max_batch, max_queue)
        s._engine = engine
        return s

    @classmethod
    def subprocess(cls, spec: EngineSpec, ctx: int, vocab: int, max_queue: int = 64) -> Scheduler:
        s = cls(ctx, vocab, spec.max_batch, max_queue)
        s._spec = spec
        return s

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self, timeout_s: float = 300) -> None:
        if self._engine is not None:
            self._thread = threading.Thread(target=self._run_in_thread, name="chatforge-engine", daemon=True)
            self._thread.start()
            return
        ctx = mp.get_context("spawn")  # a clean interpreter: no CUDA or thread state inherited from here
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_engine_process_main, args=(self._spec, child), name="chatforge-engine",
                                 daemon=True)
        self._proc.start()
        child.close()
        if not self._conn.poll(timeout_s):
            self._proc.kill()
            raise ChatforgeError(f"the engine process did not start within {timeout_s:.0f} s")
        kind, info = self._conn.recv()
        if kind != "ready":
            raise ChatforgeError(f"the engine process could not load the model: {info}")
        self._thread = threading.Thread(target=self._read_process, name="chatforge-engine-reader", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        self._send(("stop", None))
        if self._proc is not None:
            self._proc.join(timeout=10)
            if self._proc.is_alive():
                self._proc.kill()
        if self._thread:
            self._thread.join(timeout=10)

    # -- called from the event loop -------------------------------------------------------------------------
    @property
    def waiting(self) -> int:
        with self._lock:
            return self._pending - self._running

    @property
    def running(self) -> int:
        with self._lock:
            return self._running

    def tokens_per_second(self, window_s: float = 10.0) -> float:
        now = time.monotonic()
        with self._lock:
            recent = [(t, n) for t, n in self._recent if now - t <= window_s]
        if not recent:
            return 0.0
        span = max(now - recent[0][0], 1e-3)
        return sum(n for _, n in recent) / span

    def submit(self, prompts: list[list[int]], params: list[SamplingParams],
               loop: asyncio.AbstractEventLoop, calculator: bool = False) -> Ticket:
        """Queue sequences (validated here, so the engine never sees a bad request). `calculator`: the
        engine answers the model's <<calc: EXPR>> calls (tools/loop.py) and generates on, in the same ticket."""
        if self._stop or self.fault:
            raise SchedulerStopped(f"the generation engine is not running{': ' + self.fault if self.fault else ''}")
        for i, (p, sp) in enumerate(zip(prompts, params)):
            check_prompt(p, sp, self.ctx, self.vocab, "the prompt" if len(prompts) == 1 else f"prompt {i}")
        ticket = Ticket(keys=[next(self._ids) for _ in prompts], loop=loop, remaining=len(prompts))
        with self._lock:
            if self._pending + len(prompts) > self.max_running + self.max_queue:
                raise QueueFull(f"the server is busy: {self._pending} sequences running or waiting "
                                f"(limit {self.max_running} running + {self.max_queue} waiting); retry later")
            self._pending += len(prompts)
            self.prompt_tokens += sum(len(p) for p in prompts)
            for pos, key in enumerate(ticket.keys):
                self._tickets[key] = (ticket, pos)
        self._send(("add", [(k, p, sp, calculator) for k, p, sp in zip(ticket.keys, prompts, params)]))
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Drop the ticket's unfinished sequences (client went away); their rows are freed at once."""
        with self._lock:
            gone = [k for k in ticket.keys if self._tickets.pop(k, None) is not None]
            self._pending -= len(gone)
            self.cancelled_requests += len(gone)
        if gone:
            self._send(("cancel", gone))

    def _send(self, command) -> None:
        if self._conn is not None:
            try:
                self._conn.send(command)
            except (OSError, ValueError):
                pass  # the engine process is gone; the reader thread reports the fault
        else:
            self._commands.put(command)

    # -- engine side ----------------------------------------------------------------------------------------
    def _run_in_thread(self) -> None:
        def next_commands(block: bool) -> list:
            cmds = []
            try:
                cmds.append(self._commands.get(timeout=0.5) if block else self._commands.get_nowait())
            except queue.Empty:
                return cmds
            while True:
                try:
                    cmds.append(self._commands.get_nowait())
                except queue.Empty:
                    return cmds

        engine_loop(self._engine, next_commands, self._deliver)

    def _read_process(self) -> None:
        while True:
            try:
                msg = self._conn.recv()
            except (EOFError, OSError):
                if not self._stop:
                    self._fail_all("the engine process exited")
                return
            _, events, running, fault = msg
            self._deliver(events, running, fault)

    def _deliver(self, events: list[StreamEvent], running: int, fault: str | None) -> None:
        if fault:
            self._fail_all(f"generation failed: {fault}", fatal=False)
        now = time.monotonic()
        n_tokens = 0
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        with self._lock:
            self._running = running
            for ev in events:
                n_tokens += len(ev.token_ids)
                entry = self._tickets.get(ev.index)
                if entry is None:  # cancelled
                    continue
                ticket, pos = entry
                if ticket.first_token is None:
                    ticket.first_token = now
                if ev.finished:
                    del self._tickets[ev.index]
                    self._pending -= 1
                    self.finished_requests += 1
                by_loop.setdefault(ticket.loop, []).append(
                    (ticket, dataclasses.replace(ev, index=pos)))
            self.generated_tokens += n_tokens
            self._recent.append((now, n_tokens))
            while self._recent and now - self._recent[0][0] > 60:
                self._recent.popleft()
        # One wake-up of each event loop per step, not one per event (each call_soon_threadsafe writes to
        # the loop's self-pipe).
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_dispatch, items)

    def _fail_all(self, detail: str, fatal: bool = True) -> None:
        print(f"[serve] engine fault, failing the sequences in flight: {detail}", flush=True)
        if fatal:
            self.fault = detail
        err = RuntimeError(detail)
        with self._lock:
            tickets = {id(t): t for t, _ in self._tickets.values()}.values()
            self._tickets.clear()
            self._pending = 0
            self._running = 0
        for ticket in tickets:
            ticket.loop.call_soon_threadsafe(ticket.queue.put_nowait, err)


def _dispatch(items: list[tuple[Ticket, StreamEvent]]) -> None:
    for ticket, ev in items:
        ticket.queue.put_nowait(ev)
