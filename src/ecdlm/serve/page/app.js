// The live page: sends the conversation to /v1/chat/completions with stream: true and
// ecdlm.stream_canvas: true, appends each finished block's text to the answer, draws the current
// block's canvas at every denoising step, and prints tokens/s and unique experts per block.
"use strict";
const $ = (id) => document.getElementById(id);
const history = [];
let modelId = null;

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value || localStorage.getItem("ecdlm-key") || "";
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

function addMessage(role, text) {
  const div = document.createElement("div");
  div.className = "msg " + role;
  const body = document.createElement("div");
  body.className = "text";
  body.textContent = text;
  div.appendChild(body);
  $("log").appendChild(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

async function loadModel() {
  try {
    const r = await fetch("/v1/models", { headers: headers() });
    const j = await r.json();
    if (!r.ok) throw new Error(j.error ? j.error.message : r.statusText);
    modelId = j.data[0].id;
    $("model").textContent = modelId;
    $("status").textContent = "ready";
    document.body.dataset.ready = "1";
  } catch (e) {
    $("status").textContent = "not ready: " + e.message;
    setTimeout(loadModel, 1000);
  }
}

// Yields the JSON payload of each SSE "data:" event of a fetch response.
async function* sseEvents(resp) {
  const reader = resp.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += dec.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const ev = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      for (const line of ev.split("\n"))
        if (line.startsWith("data: ")) yield line.slice(6);
    }
  }
}

async function send(text) {
  history.push({ role: "user", content: text });
  addMessage("user", text);
  const div = addMessage("assistant", "");
  const body = div.querySelector(".text");
  const stats = document.createElement("div");
  stats.className = "stats";
  div.appendChild(stats);
  $("send").disabled = true;
  $("canvas-box").hidden = false;
  const t0 = performance.now();
  const experts = [];
  let answer = "", tps = 0, usage = null, finish = null;
  try {
    const resp = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: headers(),
      body: JSON.stringify({
        model: modelId, messages: history, stream: true, stream_options: { include_usage: true },
        max_tokens: Number($("max-tokens").value), temperature: Number($("temperature").value),
        ecdlm: { stream_canvas: true },
      }),
    });
    if (!resp.ok) {
      const j = await resp.json();
      throw new Error(j.error ? j.error.message : resp.statusText);
    }
    for await (const data of sseEvents(resp)) {
      if (data === "[DONE]") break;
      const j = JSON.parse(data);
      if (j.error) throw new Error(j.error.message);
      if (j.usage) usage = j.usage;
      const e = j.ecdlm || {};
      if (e.canvas !== undefined) {
        window.__canvasSeen = (window.__canvasSeen || 0) + 1;
        $("canvas").textContent = e.canvas;
        $("canvas-block").textContent = e.block;
        $("canvas-step").textContent = e.step;
      }
      const c = (j.choices || [])[0];
      if (!c) continue;
      if (c.delta && c.delta.content) {
        answer += c.delta.content;
        body.textContent = answer;
        if (e.tokens_per_s) tps = e.tokens_per_s;
        if (e.unique_experts_per_layer) experts.push(e.unique_experts_per_layer);
      }
      if (c.finish_reason) finish = c.finish_reason;
    }
    const secs = (performance.now() - t0) / 1000;
    const toks = usage ? usage.completion_tokens : 0;
    stats.textContent = `${toks} tokens in ${secs.toFixed(2)} s · ${(toks / secs || tps).toFixed(1)} tokens/s · ` +
      `unique experts per block: ${experts.length ? experts.map((x) => x.toFixed(1)).join(", ") : "n/a"} · ` +
      `finish: ${finish}`;
    history.push({ role: "assistant", content: answer });
    div.dataset.done = "1";
  } catch (e) {
    div.className = "msg error";
    body.textContent = "error: " + e.message;
    div.dataset.done = "1";
    history.pop();
  } finally {
    $("send").disabled = false;
    $("canvas-box").hidden = true;
  }
}

$("form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("input").value.trim();
  if (!text || !modelId) return;
  $("input").value = "";
  send(text);
});
$("input").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && !ev.shiftKey) {
    ev.preventDefault();
    $("form").requestSubmit();
  }
});
$("api-key").addEventListener("change", () => localStorage.setItem("ecdlm-key", $("api-key").value));
// ?q=... sends a first message once the model is known (the browser test uses it).
const q = new URLSearchParams(location.search).get("q");
loadModel().then(() => { if (q && modelId) send(q); });
