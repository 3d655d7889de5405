// The chat page: streams answers from /v1/chat/completions and records every turn, answer, rating,
// "best of" choice and correction through the /feedback API (the data flywheel's input).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { cid: null, turns: [], abort: null, busy: false };
// turn: {id, user, answers: [{id, content, author, rating, stopped, editing}], shown, best}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

async function api(path, method = "GET", body = undefined) {
  const res = await fetch(path, { method, headers: headers(), body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error((data.error && data.error.message) || res.statusText);
  return data;
}

function showError(msg) {
  const el = $("error");
  el.textContent = msg || "";
  el.hidden = !msg;
}

function settings() {
  const s = { temperature: Number($("temperature").value), top_p: Number($("top_p").value) };
  if ($("max_tokens").value) s.max_tokens = Number($("max_tokens").value);
  if ($("seed").value) s.seed = Number($("seed").value);
  return s;
}

function historyFor(k) {
  const msgs = [];
  const system = $("system").value.trim();
  if (system) msgs.push({ role: "system", content: system });
  for (let j = 0; j < k; j++) {
    const t = state.turns[j];
    msgs.push({ role: "user", content: t.user });
    const a = t.answers[t.shown];
    if (a) msgs.push({ role: "assistant", content: a.content });
  }
  msgs.push({ role: "user", content: state.turns[k].user });
  return msgs;
}

// -- rendering ------------------------------------------------------------------------------------------
function render() {
  const box = $("messages");
  box.innerHTML = "";
  state.turns.forEach((t, k) => {
    const u = document.createElement("div");
    u.className = "msg user";
    u.dataset.testid = "user-message";
    u.textContent = t.user;
    box.appendChild(u);
    const a = t.answers[t.shown];
    if (!a) return;
    const m = document.createElement("div");
    m.className = "msg assistant";
    m.dataset.testid = "assistant-message";
    if (a.editing) {
      const ta = document.createElement("textarea");
      ta.className = "edit-box";
      ta.dataset.testid = "edit-box";
      ta.value = a.content;
      m.appendChild(ta);
      const c = controls(m);
      button(c, "Save", "save-edit", () => saveEdit(k, ta.value));
      button(c, "Cancel", "cancel-edit", () => { a.editing = false; render(); });
    } else {
      const body = document.createElement("div");
      body.className = "body";
      body.dataset.testid = "answer-body";
      body.innerHTML = renderMarkdown(a.content);
      m.appendChild(body);
      a.el = body;
      answerControls(m, t, k, a);
    }
    box.appendChild(m);
  });
  box.scrollTop = box.scrollHeight;
  $("send").hidden = state.busy;
  $("stop").hidden = !state.busy;
}

function controls(parent) {
  const c = document.createElement("div");
  c.className = "controls";
  parent.appendChild(c);
  return c;
}

function button(parent, label, testid, onclick, on = false, extra = "") {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.dataset.testid = testid;
  b.className = (extra + (on ? " on" : "")).trim();
  b.disabled = state.busy;
  b.onclick = onclick;
  parent.appendChild(b);
  return b;
}

function answerControls(m, t, k, a) {
  const c = controls(m);
  if (t.answers.length > 1) {
    button(c, "◀", "prev-answer", () => { t.shown = (t.shown + t.answers.length - 1) % t.answers.length; render(); });
    const p = document.createElement("span");
    p.className = "pager";
    p.dataset.testid = "pager";
    p.textContent = (t.shown + 1) + " / " + t.answers.length;
    c.appendChild(p);
    button(c, "▶", "next-answer", () => { t.shown = (t.shown + 1) % t.answers.length; render(); });
    if (a.id) button(c, t.best === a.id ? "★ best" : "☆ best of " + t.answers.length, "mark-best",
                     () => markBest(k), t.best === a.id);
  }
  if (a.id) {
    button(c, "▲ good", "thumbs-up", () => rate(k, a.rating === 1 ? null : 1), a.rating === 1, "up");
    button(c, "▼ bad", "thumbs-down", () => rate(k, a.rating === -1 ? null : -1), a.rating === -1, "down");
    button(c, "Edit", "edit", () => { a.editing = true; render(); });
  }
  if (k === state.turns.length - 1) button(c, "Regenerate", "regenerate", () => generate(k));
  if (a.author === "human") badge(c, "written by you");
  if (a.stopped) badge(c, "stopped");
}

function badge(parent, text) {
  const s = document.createElement("span");
  s.className = "badge";
  s.textContent = text;
  parent.appendChild(s);
}

async function renderConversations() {
  let list = [];
  try { list = (await api("/feedback/conversations")).data; } catch (e) { return; }
  const ul = $("conversations");
  ul.innerHTML = "";
  for (const c of list) {
    const li = document.createElement("li");
    li.className = c.id === state.cid ? "active" : "";
    li.dataset.testid = "conversation";
    const title = document.createElement("span");
    title.textContent = c.title || "(untitled)";
    title.onclick = () => openConversation(c.id);
    li.appendChild(title);
    const del = document.createElement("button");
    del.textContent = "✕";
    del.title = "delete this conversation";
    del.dataset.testid = "delete-conversation";
    del.onclick = async () => {
      await api("/feedback/conversations/" + c.id, "DELETE");
      if (state.cid === c.id) newChat();
      renderConversations();
    };
    li.appendChild(del);
    ul.appendChild(li);
  }
}

// -- actions --------------------------------------------------------------------------------------------
function newChat() {
  if (state.abort) state.abort.abort();
  state.cid = null;
  state.turns = [];
  showError("");
  render();
  renderConversations();
}

async function openConversation(cid) {
  const conv = await api("/feedback/conversations/" + cid);
  state.cid = cid;
  $("system").value = conv.system_prompt || "";
  state.turns = conv.turns.map((t) => {
    const answers = t.answers.map((a) => ({ id: a.id, content: a.content, author: a.author, rating: a.rating }));
    const last = t.rankings.length ? t.rankings[t.rankings.length - 1] : null;
    const best = last ? (Array.isArray(last[0]) ? last[0][0] : last[0]) : null;
    const shown = best ? Math.max(0, answers.findIndex((a) => a.id === best)) : Math.max(0, answers.length - 1);
    return { id: t.id, user: t.user, answers, shown, best };
  });
  render();
  renderConversations();
}

async function send(text) {
  showError("");
  try {
    if (!state.cid) {
      state.cid = (await api("/feedback/conversations", "POST", { system_prompt: $("system").value.trim() || null })).id;
    }
    const tid = (await api("/feedback/conversations/" + state.cid + "/turns", "POST", { content: text })).id;
    state.turns.push({ id: tid, user: text, answers: [], shown: 0, best: null });
  } catch (e) {
    showError(e.message);
    return;
  }
  render();
  await generate(state.turns.length - 1);
  renderConversations();
}

async function generate(k) {
  const t = state.turns[k];
  const answer = { id: null, content: "", author: "model", rating: null };
  t.answers.push(answer);
  t.shown = t.answers.length - 1;
  state.busy = true;
  state.abort = new AbortController();
  render();
  const body = Object.assign({ messages: historyFor(k), stream: true, store: true, metadata: { turn_id: t.id } },
                             settings());
  try {
    const res = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body),
                                                      signal: state.abort.signal });
    if (!res.ok) {
      const data = await res.json().catch(() => ({}));
      throw new Error((data.error && data.error.message) || res.statusText);
    }
    const reader = res.body.getReader();
    const decoder = new TextDecoder("utf-8");
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ")) continue;
          const data = line.slice(6);
          if (data === "[DONE]") continue;
          const chunk = JSON.parse(data);
          if (chunk.error) throw new Error(chunk.error.message);
          for (const c of chunk.choices || []) {
            if (c.delta && c.delta.content) {
              answer.content += c.delta.content;
              if (answer.el) answer.el.innerHTML = renderMarkdown(answer.content);
            }
            if (c.answer_id) answer.id = c.answer_id;
          }
        }
      }
      $("messages").scrollTop = $("messages").scrollHeight;
    }
  } catch (e) {
    if (e.name === "AbortError") answer.stopped = true;
    else {
      showError(e.message);
      if (!answer.content) { t.answers.pop(); t.shown = Math.max(0, t.answers.length - 1); }
    }
  } finally {
    state.busy = false;
    state.abort = null;
    render();
  }
}

async function rate(k, value) {
  const a = state.turns[k].answers[state.turns[k].shown];
  try {
    await api("/feedback/answers/" + a.id + "/rating", "POST", { value });
    a.rating = value;
  } catch (e) { showError(e.message); }
  render();
}

async function markBest(k) {
  const t = state.turns[k];
  const best = t.answers[t.shown];
  const others = t.answers.filter((a) => a.id && a.id !== best.id).map((a) => a.id);
  try {
    await api("/feedback/turns/" + t.id + "/ranking", "POST", { answer_ids: [best.id, others] });
    t.best = best.id;
  } catch (e) { showError(e.message); }
  render();
}

async function saveEdit(k, content) {
  const t = state.turns[k];
  const src = t.answers[t.shown];
  src.editing = false;
  if (!content.trim() || content === src.content) { render(); return; }
  try {
    const id = (await api("/feedback/turns/" + t.id + "/answers", "POST",
                          { content, author: "human", edited_from: src.id, prompt: historyFor(k) })).id;
    t.answers.push({ id, content, author: "human", rating: null });
    t.shown = t.answers.length - 1;
  } catch (e) { showError(e.message); }
  render();
}

// -- wiring ---------------------------------------------------------------------------------------------
$("composer").onsubmit = (ev) => {
  ev.preventDefault();
  const text = $("input").value.trim();
  if (!text || state.busy) return;
  $("input").value = "";
  send(text);
};
$("input").onkeydown = (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("composer").requestSubmit(); }
};
$("stop").onclick = () => { if (state.abort) state.abort.abort(); };
$("new-chat").onclick = newChat;
$("api_key").value = localStorage.getItem("chatforge_api_key") || "";
$("api_key").onchange = () => { localStorage.setItem("chatforge_api_key", $("api_key").value); renderConversations(); };
fetch("/v1/models", { headers: headers() }).then((r) => r.json()).then((d) => {
  if (d.data && d.data[0]) $("model-name").textContent = "model: " + d.data[0].id;
}).catch(() => {});
render();
renderConversations();
