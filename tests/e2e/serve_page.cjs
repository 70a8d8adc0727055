// Browser side of tests/e2e/serve_page.sh: drives headless Chromium over the DevTools protocol
// (node --experimental-websocket: Node 20's WebSocket). Opens the serve page with ?q=MESSAGE (the
// page sends it once the model is known), waits for the streamed answer to finish, prints the
// rendered answer and stats as JSON, and saves a screenshot.
//   node --experimental-websocket serve_page.cjs CHROMIUM PAGE_URL SCREENSHOT_PNG PROFILE_DIR
"use strict";
const { spawn } = require("child_process");
const fs = require("fs");

const [chromium, url, shot, profile] = process.argv.slice(2);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function main() {
  const browser = spawn(chromium, ["--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-port=0",
    "--user-data-dir=" + profile, "--window-size=1000,900", "about:blank"], { stdio: ["ignore", "ignore", "pipe"] });
  let err = "";
  const wsUrl = await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error("no DevTools endpoint: " + err)), 30000);
    browser.stderr.on("data", (d) => {
      err += d;
      const m = err.match(/DevTools listening on (ws:\/\/\S+)/);
      if (m) { clearTimeout(t); resolve(m[1]); }
    });
  });
  try {
    const httpBase = wsUrl.replace(/^ws:\/\/([^/]+)\/.*$/, "http://$1");
    const target = await (await fetch(httpBase + "/json/new?" + encodeURIComponent(url), { method: "PUT" })).json();
    const ws = new WebSocket(target.webSocketDebuggerUrl);
    await new Promise((r, j) => { ws.onopen = r; ws.onerror = j; });
    let id = 0;
    const pending = new Map();
    ws.onmessage = (ev) => {
      const m = JSON.parse(ev.data);
      if (m.id && pending.has(m.id)) { pending.get(m.id)(m); pending.delete(m.id); }
    };
    const call = (method, params = {}) => new Promise((r) => { const i = ++id; pending.set(i, r); ws.send(JSON.stringify({ id: i, method, params })); });
    const evaluate = async (expr) => (await call("Runtime.evaluate", { expression: expr, returnByValue: true })).result.result.value;
    let state = null;
    for (let i = 0; i < 600; ++i) {
      state = await evaluate(`(() => { const a = document.querySelector(".msg.assistant, .msg.error");
        return { ready: document.body.dataset.ready === "1", done: !!(a && a.dataset.done === "1"),
                 error: !!document.querySelector(".msg.error"), model: document.getElementById("model").textContent,
                 answer: a ? a.querySelector(".text").textContent : null,
                 stats: a && a.querySelector(".stats") ? a.querySelector(".stats").textContent : null,
                 canvasSeen: window.__canvasSeen || 0 }; })()`);
      if (state && state.done) break;
      await sleep(100);
    }
    const png = await call("Page.captureScreenshot", { format: "png" });
    fs.writeFileSync(shot, Buffer.from(png.result.data, "base64"));
    console.log(JSON.stringify(state));
    ws.close();
  } finally {
    browser.kill("SIGKILL");
  }
}
main().catch((e) => { console.error("FAIL: " + (e.stack || e)); process.exit(1); });
