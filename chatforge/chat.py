"""Conversations -> token ids, and the terminal chat.

    chatforge chat --run runs/demo --stage sft [--system "You are ..."] [--temperature 0.7] [--top-p 0.9]
    chatforge chat --run runs/demo --retrieval [-k 3]     # answers from the run's index, sources listed
    chatforge chat --run runs/demo --calculator           # the model's <<calc: EXPR>> calls get their values
    chatforge chat --run runs/demo --cot                  # every question asks for step-by-step reasoning

Commands inside the chat: /clear (forget the history), /system TEXT, /temp X, /top_p X, /max N,
/regen (answer the last question again), /history, /quit. Answers stream token by token through the
engine; the conversation is encoded with the same chat template the HF tokenizer config carries.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from chatforge import ChatforgeError
from chatforge.engine import Engine, SamplingParams
from chatforge.tokenizer import Tokenizer

HELP = "commands: /clear /system TEXT /temp X /top_p X /max N /regen /history /quit"


def encode_conversation(tok: Tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
    """Ids of a conversation with the chat template (identical to the HF template's ids; tested)."""
    return tok.encode_chat(messages, add_generation_prompt=add_generation_prompt)


@dataclass
class ChatSession:
    engine: Engine
    system: str | None = None
    params: SamplingParams = field(default_factory=lambda: SamplingParams(max_tokens=256, temperature=0.7,
                                                                           top_p=0.9))
    history: list[dict] = field(default_factory=list)
    index: object | None = None  # a RetrievalIndex: each question is answered from its passages
    k: int = 3
    hits: list[dict] = field(default_factory=list)  # the passages of the last answer
    calculator: bool = False  # answer the model's <<calc: EXPR>> calls with the calculator tool
    cot: bool = False  # ask for step-by-step reasoning with every question (prompting.with_cot)

    def messages(self) -> list[dict]:
        msgs = ([{"role": "system", "content": self.system}] if self.system else []) + self.history
        if self.cot and msgs and msgs[-1]["role"] == "user":
            from chatforge.prompting import with_cot

            msgs = with_cot(msgs)
        if self.index is None:
            return msgs
        from chatforge.retrieval.grounding import grounded_messages

        return grounded_messages(msgs, self.hits)

    def sources_line(self, answer: str) -> str:
        """The passages given for the last answer, and which of them it cited."""
        from chatforge.retrieval.grounding import citations

        if not self.hits:
            return "(no passage in the index matches)"
        cited = {c["n"] for c in citations(answer, self.hits)}
        return "\n".join(f"  [{n}]{'*' if n in cited else ' '} {h['title']} ({h['doc_id']})"
                         for n, h in enumerate(self.hits, 1))

    def fit_prompt(self) -> list[int]:
        """The conversation's ids, dropping the lowest-ranked retrieved passages and then the oldest turns when
        it outgrows the context."""
        ctx = self.engine.model.cfg.max_seq_len
        while True:
            ids = encode_conversation(self.engine.tok, self.messages())
            if len(ids) >= ctx - 8 and len(self.hits) > 1:
                self.hits = self.hits[:-1]
                continue
            if len(ids) < ctx - 8 or len(self.history) <= 1:
                if len(ids) >= ctx:
                    raise ChatforgeError(f"the message is {len(ids)} tokens; the model's context is {ctx}")
                return ids
            self.history = self.history[2:] if len(self.history) > 2 else self.history[1:]

    def reply(self, user_text: str | None, on_delta: Callable[[str], None] = lambda d: None) -> str:
        """Answer `user_text` (None: answer the last question again), streaming deltas to `on_delta`."""
        if user_text is None:
            if self.history and self.history[-1]["role"] == "assistant":
                self.history.pop()
            if not self.history:
                raise ChatforgeError("nothing to regenerate yet")
        else:
            self.history.append({"role": "user", "content": user_text})
        if self.index is not None:
            from chatforge.retrieval.grounding import last_user_text, retrieve

            self.hits = retrieve(self.index, last_user_text(self.history), self.k)
        prompt = self.fit_prompt()
        text = ""
        if self.calculator:
            from chatforge.tools.loop import stream_with_calculator

            events = stream_with_calculator(self.engine, prompt, self.params)
        else:
            events = self.engine.stream([prompt], self.params)
        for ev in events:
            on_delta(ev.delta)
            if ev.finished:
                text = ev.completion.text
        self.history.append({"role": "assistant", "content": text})
        return text

    def command(self, line: str) -> str | None:
        """Apply a /command; returns a message to show, or None for /regen (the caller answers again)."""
        name, _, arg = line.partition(" ")
        try:
            if name == "/clear":
                self.history.clear()
                return "history cleared"
            if name == "/system":
                self.system = arg or None
                return f"system prompt: {self.system!r}"
            if name == "/temp":
                self.params.temperature = float(arg)
            elif name == "/top_p":
                self.params.top_p = float(arg)
            elif name == "/max":
                self.params.max_tokens = int(arg)
            elif name == "/history":
                return "\n".join(f"{m['role']}: {m['content']}" for m in self.messages()) or "(empty)"
            elif name == "/regen":
                return None
            else:
                return HELP
            self.params.validate()
        except ValueError:
            return f"{name} needs a number; {HELP}"
        return f"temperature {self.params.temperature}, top_p {self.params.top_p}, max {self.params.max_tokens}"


def run_terminal_chat(session: ChatSession, stdin=None, stdout=None) -> None:
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout

    def show(text: str) -> None:
        stdout.write(text)
        stdout.flush()

    show(f"chatforge chat — {HELP}\n")
    while True:
        show("you> ")
        line = stdin.readline()
        if not line:
            show("\n")
            return
        line = line.rstrip("\n")
        if not line.strip():
            continue
        if line.strip() in ("/quit", "/exit"):
            return
        user: str | None = line
        if line.startswith("/"):
            msg = session.command(line.strip())
            if msg is not None:
                show(msg + "\n")
                continue
            user = None
        show("assistant> ")
        try:
            answer = session.reply(user, show)
            if session.index is not None:
                show("\nsources (* = cited):\n" + session.sources_line(answer))
        except ChatforgeError as e:
            show(f"[{e}]")
        show("\n")
