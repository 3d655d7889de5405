"""The server's scheduler: one thread drives one running `GenerationBatch`; requests from any number of
HTTP handlers join it between decode steps (continuous batching) and leave it when they finish or their
client goes away.

    sched = Scheduler(engine, max_queue=64); sched.start()
    ticket = sched.submit([prompt_ids], [SamplingParams(...)], loop)   # raises QueueFull
    async for ev in ticket.events(): ...                                # StreamEvent, in order
    sched.cancel(ticket)                                                # frees its rows

Why a thread and not asyncio: a decode step is one blocking PyTorch call; on its own thread it never stalls
the event loop that serves other clients (streaming, /health, /metrics). Handlers and the thread talk
through a command queue (thread-safe) and `loop.call_soon_threadsafe` (events back to each handler).
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field

from chatforge import ChatforgeError
from chatforge.engine import Engine, SamplingParams, StreamEvent


class QueueFull(ChatforgeError):
    """More sequences than running rows + waiting places: the client should retry later (HTTP 429)."""


class SchedulerStopped(ChatforgeError):
    """The scheduler is shutting down or crashed (HTTP 503)."""


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
        A fault in the engine thread arrives as an exception."""
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


class Scheduler:
    def __init__(self, engine: Engine, max_queue: int = 64, idle_wait_s: float = 0.05):
        self.engine = engine
        self.max_running = engine.max_batch
        self.max_queue = max_queue
        self.idle_wait_s = idle_wait_s
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._ids = itertools.count()
        self._tickets: dict[int, tuple[Ticket, int]] = {}  # engine key -> (ticket, position in ticket)
        self._lock = threading.Lock()  # guards the counters read by /metrics and submit
        self._pending = 0  # sequences submitted and not finished / cancelled
        self._running = 0
        self._thread: threading.Thread | None = None
        self._stop = False
        self.fault: str | None = None
        # counters for /metrics
        self.generated_tokens = 0
        self.prompt_tokens = 0
        self.finished_requests = 0
        self.cancelled_requests = 0
        self._recent: deque[tuple[float, int]] = deque()  # (time, tokens) of recent steps, for tokens/s

    # -- called from the event loop -------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="chatforge-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread:
            self._thread.join(timeout=10)

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
               loop: asyncio.AbstractEventLoop) -> Ticket:
        """Queue sequences (validated here, so the engine thread never sees a bad request)."""
        if self._stop or self.fault:
            raise SchedulerStopped(f"the generation engine is not running{': ' + self.fault if self.fault else ''}")
        for i, (p, sp) in enumerate(zip(prompts, params)):
            self.engine.check_prompt(p, sp, "the prompt" if len(prompts) == 1 else f"prompt {i}")
        with self._lock:
            if self._pending + len(prompts) > self.max_running + self.max_queue:
                raise QueueFull(f"the server is busy: {self._pending} sequences running or waiting "
                                f"(limit {self.max_running} running + {self.max_queue} waiting); retry later")
            self._pending += len(prompts)
        ticket = Ticket(keys=[next(self._ids) for _ in prompts], loop=loop, remaining=len(prompts))
        for pos, key in enumerate(ticket.keys):
            self._tickets[key] = (ticket, pos)
        self._commands.put(("add", list(zip(ticket.keys, prompts, params))))
        self._wake.set()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Drop the ticket's unfinished sequences (client went away); their rows are freed at once."""
        self._commands.put(("cancel", list(ticket.keys)))
        self._wake.set()

    # -- the engine thread ----------------------------------------------------------------------------------
    def _run(self) -> None:
        batch = self.engine.batch()
        while not self._stop:
            self._apply_commands(batch)
            if not batch.busy:
                self._wake.wait(self.idle_wait_s)
                self._wake.clear()
                continue
            try:
                events = batch.step()
            except Exception as e:  # a real fault: fail the requests in flight, keep serving new ones
                self._fail_all(batch, e)
                batch = self.engine.batch()
                continue
            with self._lock:
                self._running = batch.running
            self._deliver(events)

    def _apply_commands(self, batch) -> None:
        while True:
            try:
                kind, payload = self._commands.get_nowait()
            except queue.Empty:
                return
            if kind == "add":
                for key, prompt, sp in payload:
                    if key in self._tickets:  # may have been cancelled before it got here
                        batch.add(key, prompt, sp)
                        with self._lock:
                            self.prompt_tokens += len(prompt)
            else:
                for key in payload:
                    if key in self._tickets:
                        batch.cancel(key)
                        del self._tickets[key]
                        with self._lock:
                            self._pending -= 1
                            self.cancelled_requests += 1
                with self._lock:
                    self._running = batch.running

    def _deliver(self, events: list[StreamEvent]) -> None:
        now = time.monotonic()
        n_tokens = 0
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for ev in events:
            n_tokens += len(ev.token_ids)
            entry = self._tickets.get(ev.index)
            if entry is None:
                continue
            ticket, pos = entry
            if ticket.first_token is None:
                ticket.first_token = now
            if ev.finished:
                del self._tickets[ev.index]
                with self._lock:
                    self._pending -= 1
                    self.finished_requests += 1
            by_loop.setdefault(ticket.loop, []).append(
                (ticket, StreamEvent(pos, ev.delta, ev.token_ids, ev.finished, ev.completion)))
        # One wake-up of the event loop per step, not one per event: each call_soon_threadsafe writes to the
        # loop's self-pipe, which under load cost this thread ~12% of its time.
        for loop, items in by_loop.items():
            loop.call_soon_threadsafe(_dispatch, items)
        with self._lock:
            self.generated_tokens += n_tokens
            self._recent.append((now, n_tokens))
            while self._recent and now - self._recent[0][0] > 60:
                self._recent.popleft()

    def _fail_all(self, batch, error: Exception) -> None:
        detail = "".join(traceback.format_exception_only(type(error), error)).strip()
        print(f"[serve] engine fault, failing {len(self._tickets)} sequences: {detail}", flush=True)
        traceback.print_exc()
        err = RuntimeError(f"generation failed: {detail}")
        for ticket, _ in {id(t): (t, p) for t, p in self._tickets.values()}.values():
            ticket.loop.call_soon_threadsafe(ticket.queue.put_nowait, err)
        self._tickets.clear()
        with self._lock:
            self._pending = 0
            self._running = 0


def _dispatch(items: list[tuple[Ticket, StreamEvent]]) -> None:
    for ticket, ev in items:
        ticket.queue.put_nowait(ev)
