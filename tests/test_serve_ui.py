"""The web chat page in headless Chromium (Debian's `chromium`, driven by Playwright): send a message and
see the streamed answer, regenerate, rate, choose the best, edit (Markdown, code and Chinese rendered);
then the rows are in the database and in `chatforge feedback export`; deleting the conversation removes it.

`.ci/run` installs Chromium; elsewhere the test is skipped when /usr/bin/chromium is missing, unless
CHATFORGE_REQUIRE_BROWSER=1 (set by CI) makes that a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import cli_env
from tests.serving import running_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        if os.environ.get("CHATFORGE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{CHROMIUM} missing (apt-get install chromium)")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()


def test_chat_page_streams_and_records_feedback(browser, base_run, tmp_path):
    db = f"sqlite:///{tmp_path / 'fb.db'}"
    with running_server(base_run, "--db", db, "--max-tokens-limit", "60") as url:
        page = browser.new_page()
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.fill("[data-testid=max_tokens]", "24")
        page.fill("[data-testid=input]", "Where is the Marmidor common?")
        with page.expect_response(lambda r: r.url.endswith("/v1/chat/completions")) as resp_info:
            page.click("[data-testid=send]")
        resp = resp_info.value
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [b[6:] for b in resp.text().split("\n\n") if b.startswith("data: ")]
        streamed = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1]
                           if json.loads(e)["choices"])
        page.wait_for_selector("[data-testid=thumbs-up]")  # the answer finished and was stored
        shown = page.inner_html("[data-testid=assistant-message] [data-testid=answer-body]")
        assert len(events) > 3 and streamed  # role chunk, deltas, finish, [DONE]
        # exactly the streamed text, rendered (serialised through the DOM as the page's own HTML is)
        assert shown == page.evaluate("s => { const d = document.createElement('div'); "
                                      "d.innerHTML = renderMarkdown(s); return d.innerHTML; }", streamed)

        page.click("[data-testid=regenerate]")
        page.wait_for_function("document.querySelector('[data-testid=pager]')?.textContent === '2 / 2'")
        page.wait_for_selector("[data-testid=thumbs-up]:not([disabled])")
        page.click("[data-testid=thumbs-up]")
        page.wait_for_selector("[data-testid=thumbs-up].on")
        page.click("[data-testid=mark-best]")
        page.wait_for_selector("[data-testid=mark-best].on")
        page.click("[data-testid=prev-answer]")
        page.wait_for_function("document.querySelector('[data-testid=pager]')?.textContent === '1 / 2'")
        page.click("[data-testid=thumbs-down]")
        page.wait_for_selector("[data-testid=thumbs-down].on")

        page.click("[data-testid=edit]")
        better = "Near **Rennu**, 在赤河边。\n\n```python\nprint('hi')\n```"
        page.fill("[data-testid=edit-box]", better)
        page.click("[data-testid=save-edit]")
        page.wait_for_function("document.querySelector('[data-testid=pager]')?.textContent === '3 / 3'")
        body = page.locator("[data-testid=answer-body]")
        assert body.locator("strong").inner_text() == "Rennu"
        assert "在赤河边" in body.inner_text()
        assert body.locator("pre code.language-python").inner_text() == "print('hi')"
        assert page.locator("[data-testid=conversation]").count() == 1
        assert not errors, errors

    # the rows are in the database ...
    from chatforge.serve.store import FeedbackStore

    convs = FeedbackStore(db).export_all()
    assert len(convs) == 1 and len(convs[0]["turns"]) == 1
    turn = convs[0]["turns"][0]
    model_answers = [a for a in turn["answers"] if a["author"] == "model"]
    human = [a for a in turn["answers"] if a["author"] == "human"]
    assert len(model_answers) == 2 and len(human) == 1
    first_a, second_a = model_answers
    assert first_a["content"] == streamed and first_a["params"]["max_tokens"] == 24
    assert (first_a["rating"], second_a["rating"]) == (-1, 1)
    assert turn["rankings"] == [[second_a["id"], [first_a["id"]]]]
    assert human[0]["content"] == better and human[0]["edited_from"] == first_a["id"]

    # ... and in `chatforge feedback export`
    out = tmp_path / "export"
    proc = subprocess.run([sys.executable, "-m", "chatforge.cli", "feedback", "export", "--run", str(base_run),
                           "--db", db, "--out", str(out)], env=cli_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    sft = [json.loads(x) for x in (out / "sft.jsonl").read_text().split("\n") if x]
    ranks = [json.loads(x) for x in (out / "rankings.jsonl").read_text().split("\n") if x]
    question = [{"role": "user", "content": "Where is the Marmidor common?"}]
    assert question + [{"role": "assistant", "content": better}] in [d["messages"] for d in sft]
    assert question + [{"role": "assistant", "content": second_a["content"]}] in [d["messages"] for d in sft]
    pairs = {(r["responses"][r["ranking"][0]], r["responses"][r["ranking"][1]]) for r in ranks
             if all(isinstance(x, int) for x in r["ranking"])}
    assert (second_a["content"], first_a["content"]) in pairs  # the user's best-of choice
    assert (better, first_a["content"]) in pairs  # the correction over what it corrected

    # deleting the conversation from the page removes it from the store
    with running_server(base_run, "--db", db) as url:
        page = browser.new_page()
        page.goto(url + "/")
        page.wait_for_selector("[data-testid=conversation]")
        page.click("[data-testid=delete-conversation]")
        page.wait_for_function("document.querySelectorAll('[data-testid=conversation]').length === 0")
    assert FeedbackStore(db).counts() == {"conversations": 0, "turns": 0, "answers": 0, "rankings": 0}
