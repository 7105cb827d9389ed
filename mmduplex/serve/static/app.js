// mmduplex serve: the page. One WebSocket per stream (/api/session); the protocol is in mmduplex/serve/app.py.
"use strict";

const $ = (id) => document.getElementById(id);
const video = $("video");
const STRIP_BARS = 150;   // frames shown in the token strip
const RECENT_STEPS = 25;  // steps the step latency (median) is taken over
const BEHIND_S = 0.5;     // lag that counts as falling behind the video
const DRIFT_S = 0.5;      // the <video> is put back on the stream's clock when it drifts more than this

let socket = null;
let stream = null;        // the current stream's figures

function fmt(t) {
  const m = Math.floor(t / 60);
  return `${m}:${(t - 60 * m).toFixed(1).padStart(4, "0")}`;
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

function setState(state) {
  document.body.dataset.state = state;
  const live = state === "playing";
  $("question").disabled = !live;
  document.querySelector("#ask button").disabled = !live;
}

function addLine(kind, t, text, attrs = {}) {
  const li = document.createElement("li");
  li.className = kind;
  li.dataset.t = t.toFixed(2);
  for (const [key, value] of Object.entries(attrs)) li.dataset[key] = value;
  const time = document.createElement("span");
  time.className = "time";
  time.textContent = fmt(t);
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  li.append(time, body);
  const list = $("lines");
  list.append(li);
  list.scrollTop = list.scrollHeight;
  return li;
}

async function loadInfo() {
  const info = await (await fetch("/api/info")).json();
  const parts = [info.model ? `bundle ${info.model}` : "a bundle", `${info.step_hz} steps/s`,
    `frames at ${info.fps} fps`, `text ${info.delay_s.toFixed(1)} s behind the video`,
    `encoder ${info.encoder || "none"}`, `uploads up to ${info.max_upload_mb} MB`,
    `${info.max_sessions} viewers at most`];
  $("model").textContent = parts.join(" · ");
}

async function loadVideos() {
  const { videos } = await (await fetch("/api/videos")).json();
  for (const v of videos) addOption(v, false);
  if (videos.length) $("video-select").value = videos[0].id;
}

function addOption(v, select) {
  const option = document.createElement("option");
  option.value = v.id;
  option.textContent = v.name;
  option.dataset.url = v.url;
  $("video-select").append(option);
  if (select) $("video-select").value = v.id;
}

async function upload(file) {
  showError("");
  const body = new FormData();
  body.append("file", file);
  $("file").disabled = true;
  try {
    const response = await fetch("/api/upload", { method: "POST", body });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) {
      showError(`Upload refused: ${answer.error || response.statusText}`);
      return;
    }
    addOption({ ...answer.video, name: `${answer.video.name} (uploaded)` }, true);
    start();
  } catch (err) {
    showError(`Upload failed: ${err}`);
  } finally {
    $("file").disabled = false;
    $("file").value = "";
  }
}

function stop() {
  if (socket) {
    socket.onclose = null;
    socket.close();
    socket = null;
  }
  video.pause();
}

function start() {
  const id = $("video-select").value;
  if (!id) { showError("Pick a video first (or upload one)."); return; }
  stop();
  showError("");
  $("lines").replaceChildren();
  $("strip").replaceChildren();
  $("speaking").textContent = "";
  $("behind").hidden = true;
  stream = { steps: [], tokens: [], lag: 0, questions: new Map(), speaking: [] };
  setState("connecting");
  const ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/api/session`);
  socket = ws;
  ws.onopen = () => ws.send(JSON.stringify({ type: "start", video: id }));
  ws.onmessage = (event) => handle(ws, JSON.parse(event.data));
  ws.onclose = () => {
    if (socket === ws && document.body.dataset.state !== "ended" && document.body.dataset.state !== "error") {
      showError("The connection to the server closed.");
      setState("error");
    }
  };
}

function handle(ws, msg) {
  if (ws !== socket) return;
  switch (msg.type) {
    case "ready": return ready(ws, msg);
    case "frame": return frame(msg);
    case "step": return step(msg);
    case "word": return word(msg);
    case "asked": {
      addLine("user", msg.t, msg.text, { question: msg.id });
      return;
    }
    case "not_asked": {
      addLine("note", video.currentTime, `not asked: ${msg.text} (${msg.reason})`);
      return;
    }
    case "line": {
      stream.speaking = [];
      $("speaking").textContent = "";
      const attrs = { end: msg.end.toFixed(2) };
      if (msg.answer_to !== null) attrs.answerTo = msg.answer_to;
      addLine(msg.answer_to !== null ? "model answer" : "model", msg.start, msg.text, attrs);
      return;
    }
    case "notice": return showError(msg.message);
    case "end": {
      setState("ended");
      const r = msg.report;
      $("talk-note").textContent = `done: ${r.lines} lines, ${r.steps} steps, RTF ${fmtNum(r.rtf, 3)}, ` +
        `${r.late_steps} late steps`;
      return;
    }
    case "error": {
      showError(msg.message);
      setState("error");
      video.pause();
      return;
    }
  }
}

function ready(ws, msg) {
  $("talk-note").textContent = `text lags the video by ${msg.delay_s.toFixed(1)} s`;
  video.src = msg.video.url;
  video.muted = !$("sound").checked;
  video.addEventListener("playing", () => {
    if (ws === socket) {
      ws.send(JSON.stringify({ type: "play" }));  // stream time 0 on the server: now
      stream.playedAt = performance.now();
      setState("playing");
    }
  }, { once: true });
  video.play().catch((err) => {
    if (err.name === "AbortError") return;  // paused by the browser (a hidden tab): it starts when shown
    showError(`The browser cannot play this video: ${err.message || err}`);
    ws.send(JSON.stringify({ type: "stop" }));
    setState("error");
  });
}

// The server feeds the video at its clock from the moment playback started; the <video> keeps to the same clock
// (a hidden tab, a stall), so what the page shows is what the model is seeing.
function keepToClock() {
  if (!stream || !stream.playedAt || document.body.dataset.state !== "playing" || document.hidden) return;
  const clock = (performance.now() - stream.playedAt) / 1000;
  if (!(clock < video.duration)) return;
  if (video.paused || Math.abs(video.currentTime - clock) > DRIFT_S) {
    video.currentTime = clock;
    video.play().catch(() => {});
  }
}

function frame(msg) {
  stream.tokens.push(msg.tokens);
  const strip = $("strip");
  const bar = document.createElement("span");
  bar.className = msg.dropped ? "bar dropped" : "bar";
  bar.dataset.tokens = msg.tokens;
  bar.title = `${fmt(msg.t)}: ${msg.tokens} tokens${msg.dropped ? " (dropped: backlog full)" : ""}`;
  strip.append(bar);
  while (strip.children.length > STRIP_BARS) strip.firstChild.remove();
  const top = Math.max(1, ...Array.from(strip.children, (b) => Number(b.dataset.tokens)));
  for (const b of strip.children) b.style.height = `${(100 * Number(b.dataset.tokens)) / top}%`;
  const n = stream.tokens.length;
  const mean = stream.tokens.reduce((a, b) => a + b, 0) / n;
  $("strip-note").textContent = `${n} frames, ${mean.toFixed(1)} tokens per frame on average, ` +
    `${msg.tokens} in the last`;
}

function fmtNum(x, digits) {
  return x === null || x === undefined ? "–" : Number(x).toFixed(digits);
}

function step(msg) {
  const steps = stream.steps;
  steps.push(msg);
  if (steps.length > RECENT_STEPS) steps.shift();
  const ms = steps.map((s) => s.ms).sort((a, b) => a - b);
  $("stat-t").textContent = fmt(msg.t);
  $("stat-ms").textContent = ms[Math.floor(ms.length / 2)].toFixed(1);
  $("stat-rtf").textContent = msg.rtf.toFixed(3);
  $("stat-lag").textContent = msg.lag_s.toFixed(2);
  stream.lag = msg.lag_s;
  const behind = msg.lag_s > BEHIND_S;
  $("lag").classList.toggle("behind", behind);
  $("behind").hidden = !behind;
  if (behind) $("behind").textContent = `The model is ${msg.lag_s.toFixed(1)} s behind the video: compute is ` +
    "slower than real time here, so its lines come late (the video is not slowed down).";
}

function word(msg) {
  if (msg.start || !stream.speaking.length) stream.speaking.push(msg.text);
  else stream.speaking[stream.speaking.length - 1] += msg.text;
  $("speaking").textContent = `${fmt(msg.t)}  ${stream.speaking.join(" ")}…`;
}

function ask(event) {
  event.preventDefault();
  const text = $("question").value.trim();
  if (!text || !socket || document.body.dataset.state !== "playing") return;
  socket.send(JSON.stringify({ type: "ask", text, t: video.currentTime }));
  $("question").value = "";
}

$("start").addEventListener("click", start);
$("file").addEventListener("change", () => { if ($("file").files.length) upload($("file").files[0]); });
$("ask").addEventListener("submit", ask);
$("sound").addEventListener("change", () => { video.muted = !$("sound").checked; });
video.addEventListener("error", () => {
  if (!socket) return;
  showError("The browser cannot play this video (its codec or container); the server could decode it.");
  socket.send(JSON.stringify({ type: "stop" }));
  setState("error");
});
video.addEventListener("ended", () => {  // the input is over: the model finishes its last lines
  if (document.body.dataset.state === "playing") setState("finishing");
});
window.addEventListener("pagehide", stop);
document.addEventListener("visibilitychange", keepToClock);
setInterval(keepToClock, 1000);
loadInfo().catch((err) => { $("model").textContent = `no answer from the server: ${err}`; });
loadVideos().catch((err) => showError(`Could not list the videos: ${err}`));
