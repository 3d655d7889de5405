"""The feedback store: conversations, the answers given to each user turn (with the model and sampling
settings that produced them), ratings, rankings and human-written corrections. SQLAlchemy, so any URL
works: SQLite in the run directory by default (WAL, so the server writes while an export reads), or
PostgreSQL for a shared deployment (`--db postgresql+psycopg://user@host/db`).

    store = FeedbackStore("sqlite:///runs/demo/feedback/feedback.db")
    cid = store.create_conversation(title="hi", system_prompt=None)
    tid = store.add_turn(cid, "What does a Zogota eat?")
    aid = store.add_answer(tid, "Berries.", prompt=[...messages...], author="model", model="sft", params={...})
    store.rate(aid, +1); store.rank(tid, [aid, other]); store.add_answer(tid, "better", author="human", edited_from=aid)

Model: a conversation has turns (one per user message); a turn has answers (model samples, regenerations,
human corrections); an answer may have a rating (+1 / -1, the latest wins); a turn may have rankings (answer
ids best first, the latest is the user's current choice). Deleting a conversation deletes all of it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

from sqlalchemy import JSON, ForeignKey, Integer, String, Text, create_engine, event, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from chatforge import ChatforgeError


def _id() -> str:
    return uuid.uuid4().hex


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Conversation(Base):
    __tablename__ = "conversations"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_id)
    title: Mapped[str] = mapped_column(Text, default="")
    system_prompt: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=_now)
    turns: Mapped[list[Turn]] = relationship(back_populates="conversation", cascade="all, delete-orphan",
                                             order_by="Turn.position")


class Turn(Base):
    __tablename__ = "turns"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_id)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    user_content: Mapped[str] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(default=_now)
    conversation: Mapped[Conversation] = relationship(back_populates="turns")
    answers: Mapped[list[Answer]] = relationship(back_populates="turn", cascade="all, delete-orphan",
                                                 order_by="Answer.created_at")
    rankings: Mapped[list[Ranking]] = relationship(back_populates="turn", cascade="all, delete-orphan",
                                                   order_by="Ranking.created_at")


class Answer(Base):
    __tablename__ = "answers"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_id)
    turn_id: Mapped[str] = mapped_column(ForeignKey("turns.id", ondelete="CASCADE"), index=True)
    content: Mapped[str] = mapped_column(Text)
    author: Mapped[str] = mapped_column(String(16))  # "model" | "human"
    model: Mapped[str | None] = mapped_column(String(200), nullable=True)
    params: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # sampling settings
    finish_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
    prompt: Mapped[list | None] = mapped_column(JSON, nullable=True)  # the exact messages answered
    edited_from: Mapped[str | None] = mapped_column(String(32), nullable=True)
    rating: Mapped[int | None] = mapped_column(Integer, nullable=True)  # +1 / -1
    created_at: Mapped[dt.datetime] = mapped_column(default=_now)
    turn: Mapped[Turn] = relationship(back_populates="answers")


class Ranking(Base):
    __tablename__ = "rankings"
    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=_id)
    turn_id: Mapped[str] = mapped_column(ForeignKey("turns.id", ondelete="CASCADE"), index=True)
    answer_ids: Mapped[list] = mapped_column(JSON)  # best first; an element may be a list (tied answers)
    created_at: Mapped[dt.datetime] = mapped_column(default=_now)
    turn: Mapped[Turn] = relationship(back_populates="rankings")


class NotFound(ChatforgeError):
    pass


def default_db_url(run: str | Path) -> str:
    folder = Path(run) / "feedback"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(folder / 'feedback.db').resolve()}"


class FeedbackStore:
    def __init__(self, url: str):
        try:
            self.engine = create_engine(url, future=True)
        except Exception as e:
            raise ChatforgeError(f"feedback database {url!r}: {e}") from None
        if self.engine.dialect.name == "sqlite":
            @event.listens_for(self.engine, "connect")
            def _sqlite_pragmas(conn, _record):  # WAL: readers (export) don't block the server's writes
                cur = conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA busy_timeout=5000")
                cur.close()
        try:
            Base.metadata.create_all(self.engine)
        except Exception as e:
            raise ChatforgeError(f"feedback database {url!r}: cannot open or create the tables ({e})") from None
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> Session:
        return self._session()

    # -- writes ---------------------------------------------------------------------------------------------
    def create_conversation(self, title: str = "", system_prompt: str | None = None) -> str:
        with self.session() as s, s.begin():
            conv = Conversation(title=title or "", system_prompt=system_prompt)
            s.add(conv)
        return conv.id

    def delete_conversation(self, cid: str) -> None:
        with self.session() as s, s.begin():
            conv = s.get(Conversation, cid)
            if conv is None:
                raise NotFound(f"no conversation {cid}")
            s.delete(conv)

    def add_turn(self, cid: str, user_content: str) -> str:
        with self.session() as s, s.begin():
            conv = s.get(Conversation, cid)
            if conv is None:
                raise NotFound(f"no conversation {cid}")
            turn = Turn(conversation_id=cid, position=len(conv.turns), user_content=user_content)
            s.add(turn)
            if not conv.title:
                conv.title = user_content[:80]
        return turn.id

    def add_answer(self, turn_id: str, content: str, author: str = "model", model: str | None = None,
                   params: dict | None = None, finish_reason: str | None = None, prompt: list | None = None,
                   edited_from: str | None = None) -> str:
        if author not in ("model", "human"):
            raise ChatforgeError(f"author must be 'model' or 'human', not {author!r}")
        with self.session() as s, s.begin():
            if s.get(Turn, turn_id) is None:
                raise NotFound(f"no turn {turn_id}")
            if edited_from is not None:
                src = s.get(Answer, edited_from)
                if src is None or src.turn_id != turn_id:
                    raise NotFound(f"no answer {edited_from} in turn {turn_id}")
                prompt = prompt or src.prompt
            ans = Answer(turn_id=turn_id, content=content, author=author, model=model, params=params,
                         finish_reason=finish_reason, prompt=prompt, edited_from=edited_from)
            s.add(ans)
        return ans.id

    def rate(self, answer_id: str, value: int | None) -> None:
        if value not in (1, -1, None):
            raise ChatforgeError(f"rating must be 1, -1 or null, not {value!r}")
        with self.session() as s, s.begin():
            ans = s.get(Answer, answer_id)
            if ans is None:
                raise NotFound(f"no answer {answer_id}")
            ans.rating = value

    def rank(self, turn_id: str, answer_ids: list) -> str:
        """`answer_ids` best first; an element may be a list of ids the user ranks equal (a tie tier), e.g.
        the web page's "best of" choice is [best, [the others]]."""
        flat = [a for tier in answer_ids for a in (tier if isinstance(tier, list) else [tier])]
        if not all(isinstance(a, str) for a in flat) or any(isinstance(t, list) and not t for t in answer_ids):
            raise ChatforgeError("a ranking is a list of answer ids (or lists of tied ids), best first")
        if len(flat) < 2 or len(set(flat)) != len(flat) or len(answer_ids) < 2:
            raise ChatforgeError("a ranking needs at least two different answers in at least two places, best first")
        with self.session() as s, s.begin():
            turn = s.get(Turn, turn_id)
            if turn is None:
                raise NotFound(f"no turn {turn_id}")
            known = {a.id for a in turn.answers}
            missing = [a for a in flat if a not in known]
            if missing:
                raise NotFound(f"answers {missing} are not answers of turn {turn_id}")
            r = Ranking(turn_id=turn_id, answer_ids=list(answer_ids))
            s.add(r)
        return r.id

    # -- reads ----------------------------------------------------------------------------------------------
    def has_turn(self, turn_id: str) -> bool:
        with self.session() as s:
            return s.get(Turn, turn_id) is not None

    def list_conversations(self) -> list[dict]:
        with self.session() as s:
            rows = s.scalars(select(Conversation).order_by(Conversation.created_at.desc())).all()
            return [{"id": c.id, "title": c.title, "created_at": c.created_at.isoformat()} for c in rows]

    def conversation(self, cid: str) -> dict:
        with self.session() as s:
            conv = s.get(Conversation, cid)
            if conv is None:
                raise NotFound(f"no conversation {cid}")
            return _conversation_dict(conv)

    def export_all(self) -> list[dict]:
        """Every conversation with its turns, answers, ratings and rankings (what the flywheel reads)."""
        with self.session() as s:
            return [_conversation_dict(c) for c in s.scalars(select(Conversation).order_by(Conversation.created_at))]

    def counts(self) -> dict:
        with self.session() as s:
            return {name: s.query(model).count() for name, model in
                    (("conversations", Conversation), ("turns", Turn), ("answers", Answer), ("rankings", Ranking))}


def _conversation_dict(conv: Conversation) -> dict:
    return {"id": conv.id, "title": conv.title, "system_prompt": conv.system_prompt,
            "created_at": conv.created_at.isoformat(),
            "turns": [{"id": t.id, "position": t.position, "user": t.user_content,
                       "answers": [{"id": a.id, "content": a.content, "author": a.author, "model": a.model,
                                    "params": a.params, "finish_reason": a.finish_reason,
                                    "prompt": a.prompt, "edited_from": a.edited_from, "rating": a.rating}
                                   for a in t.answers],
                       "rankings": [r.answer_ids for r in t.rankings]}
                      for t in conv.turns]}

