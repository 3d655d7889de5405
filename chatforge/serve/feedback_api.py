"""The feedback API (used by the web page; any client may use it): conversations, turns, answers, ratings,
rankings and corrections, stored in the `FeedbackStore`.

    POST   /feedback/conversations                 {"title"?, "system_prompt"?}          -> {"id"}
    GET    /feedback/conversations                                                         -> {"data": [...]}
    GET    /feedback/conversations/{id}                                                    -> the whole conversation
    DELETE /feedback/conversations/{id}                                                    -> {"deleted": true}
    POST   /feedback/conversations/{id}/turns      {"content"}                            -> {"id"} (a user message)
    POST   /feedback/turns/{id}/answers            {"content", "author": "human"|"model", "edited_from"?, "prompt"?}
    POST   /feedback/answers/{id}/rating           {"value": 1 | -1 | null}
    POST   /feedback/turns/{id}/ranking            {"answer_ids": [best, ..., worst]}  (a list element = a tie)
    GET    /feedback/export                                                                -> SFT + RM records

Model answers are normally recorded by /v1/chat/completions itself (`store: true`, `metadata.turn_id`).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from chatforge import ChatforgeError
from chatforge.serve.protocol import ApiError
from chatforge.serve.store import NotFound


def feedback_routes(server) -> APIRouter:
    from chatforge.serve.app import _json_body

    store = server.store
    r = APIRouter(prefix="/feedback")

    def call(fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NotFound as e:
            raise ApiError(404, str(e), code="not_found") from None
        except ChatforgeError as e:
            raise ApiError(400, str(e)) from None

    def text(body: dict, key: str, required: bool = True) -> str | None:
        v = body.get(key)
        if v is None and not required:
            return None
        if not isinstance(v, str) or (required and not v.strip()):
            raise ApiError(400, f"'{key}' must be a non-empty string", key)
        return v

    @r.post("/conversations")
    async def create(request: Request):
        body = await _json_body(request)
        return {"id": call(store.create_conversation, text(body, "title", False) or "",
                           text(body, "system_prompt", False))}

    @r.get("/conversations")
    async def listing():
        return {"data": call(store.list_conversations)}

    @r.get("/conversations/{cid}")
    async def show(cid: str):
        return call(store.conversation, cid)

    @r.delete("/conversations/{cid}")
    async def delete(cid: str):
        call(store.delete_conversation, cid)
        return {"id": cid, "deleted": True}

    @r.post("/conversations/{cid}/turns")
    async def turn(cid: str, request: Request):
        body = await _json_body(request)
        return {"id": call(store.add_turn, cid, text(body, "content"))}

    @r.post("/turns/{tid}/answers")
    async def answer(tid: str, request: Request):
        body = await _json_body(request)
        author = body.get("author", "human")
        prompt = body.get("prompt")
        if prompt is not None and not isinstance(prompt, list):
            raise ApiError(400, "'prompt' must be a list of messages", "prompt")
        return {"id": call(store.add_answer, tid, text(body, "content"), author, body.get("model"),
                           body.get("params"), body.get("finish_reason"), prompt, body.get("edited_from"))}

    @r.post("/answers/{aid}/rating")
    async def rate(aid: str, request: Request):
        body = await _json_body(request)
        if "value" not in body:
            raise ApiError(400, "'value' is required: 1, -1 or null", "value")
        call(store.rate, aid, body["value"])
        return {"id": aid, "rating": body["value"]}

    @r.post("/turns/{tid}/ranking")
    async def rank(tid: str, request: Request):
        body = await _json_body(request)
        ids = body.get("answer_ids")
        if not isinstance(ids, list):
            raise ApiError(400, "'answer_ids' must be a list of answer ids (or lists of tied ids), best first",
                           "answer_ids")
        return {"id": call(store.rank, tid, ids)}

    @r.get("/export")
    async def export():
        from chatforge.serve.flywheel import feedback_records

        sft, rankings, stats = feedback_records(store.export_all())
        return {"sft": sft, "rankings": rankings, "stats": stats}

    return r
