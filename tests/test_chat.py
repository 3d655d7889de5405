"""Terminal chat: history, system prompt, commands, regenerate, and the template it sends to the engine."""

from __future__ import annotations

import io

import torch

from chatforge.chat import ChatSession, run_terminal_chat
from chatforge.engine import Engine, SamplingParams
from chatforge.model import GPT, ModelConfig
from chatforge.tokenizer import Tokenizer


def _session(prepared_run_template, ctx: int = 128) -> ChatSession:
    tok = Tokenizer.load(prepared_run_template / "tokenizer")
    torch.manual_seed(0)
    model = GPT(ModelConfig.preset_style("llama", vocab_size=tok.vocab_size, n_layer=1, d_model=32, n_head=2,
                                         max_seq_len=ctx))
    return ChatSession(Engine(model, tok), system="Be brief.", params=SamplingParams(max_tokens=8, temperature=0.0))


def test_terminal_chat_commands_and_history(prepared_run_template):
    s = _session(prepared_run_template)
    sent = []
    real_stream = s.engine.stream
    s.engine.stream = lambda prompts, params: (sent.append(prompts[0]), real_stream(prompts, params))[1]
    stdin = io.StringIO("Where is Kalo?\nAnd its river?\n/regen\n/history\n/temp 0.5\n/clear\n/temp abc\n/quit\n")
    out = io.StringIO()
    run_terminal_chat(s, stdin, out)
    text = out.getvalue()
    # the second question was sent with the whole conversation so far, through the chat template
    first_answer = text.split("assistant> ")[1].split("\n")[0]
    assert sent[1] == s.engine.tok.encode_chat(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is Kalo?"},
         {"role": "assistant", "content": first_answer}, {"role": "user", "content": "And its river?"}],
        add_generation_prompt=True)
    assert sent[2] == sent[1]  # /regen asks the same conversation again (greedy: the same answer)
    assert "user: And its river?" in text and "temperature 0.5" in text
    assert "history cleared" in text and "/temp needs a number" in text
    assert s.history == []


def test_long_conversations_drop_the_oldest_turns(prepared_run_template):
    s = _session(prepared_run_template)
    for i in range(30):
        s.reply(f"Question number {i} about the town of Kalo and its river?")
    assert len(s.fit_prompt()) < s.engine.model.cfg.max_seq_len
    assert s.history[-2]["content"].startswith("Question number 29")


def test_terminal_chat_with_retrieval_grounds_each_question_and_lists_sources(prepared_run_template, tmp_path):
    from chatforge.retrieval.index import RetrievalIndex

    idx = RetrievalIndex.load(tmp_path)
    idx.add([{"doc_id": "loan", "title": "Loan", "source": "t", "text": "The town of Loan lies on the Pine River."},
             {"doc_id": "hasu", "title": "Hasu", "source": "t", "text": "Hasu bakes bread every morning."}])
    s = _session(prepared_run_template, ctx=512)  # room for the instruction and the passage
    s.index, s.k = idx, 1
    sent = []
    real_stream = s.engine.stream
    s.engine.stream = lambda prompts, params: (sent.append(prompts[0]), real_stream(prompts, params))[1]
    out = io.StringIO()
    run_terminal_chat(s, io.StringIO("Which river is Loan on?\nWhat does Hasu bake?\n/quit\n"), out)
    prompts = [s.engine.tok.decode(p, skip_special=False) for p in sent]
    assert "[1] Loan: The town of Loan lies on the Pine River." in prompts[0] and "Hasu bakes" not in prompts[0]
    assert "[1] Hasu: Hasu bakes bread" in prompts[1] and "Pine River" not in prompts[1]  # each question its own
    assert out.getvalue().count("sources (* = cited):") == 2 and "(loan)" in out.getvalue()
    assert [m["role"] for m in s.history] == ["user", "assistant", "user", "assistant"]  # passages not kept
