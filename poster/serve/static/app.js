// The poster page: send a photo or webcam frames to /v1/predict, draw the faces it answers.
// Everything is served by `poster serve` itself (no CDN); the page talks to this server only.
"use strict";

const PALETTE = ["#3cb44b", "#e63232", "#0082c8", "#f58230", "#911eb4", "#46f0f0",
                 "#f032e6", "#d2f53c", "#fabed4", "#008080"];  // as poster.predict.annotate
const TOP_K = 3;

const $ = (id) => document.getElementById(id);
const canvas = $("canvas");
const ctx = canvas.getContext("2d");
const video = $("video");
const state = { classes: [], stream: null, timer: null, inFlight: false, answers: [] };

function headers(type) {
  const h = { "Content-Type": type };
  const key = $("api-key").value.trim();
  if (key) h["X-API-Key"] = key;
  return h;
}

function showStatus(text) { $("status").textContent = text; }

async function loadModel() {
  $("model-info").textContent = "loading the model description…";
  try {
    const r = await fetch("/v1/model", { headers: headers("application/json") });
    const body = await r.json();
    if (!r.ok) { $("model-info").textContent = body.error || `error ${r.status}`; return; }
    state.classes = body.classes;
    $("model-info").textContent = `${body.model} · ${body.architecture} · ${body.classes.join(", ")}`;
  } catch (e) {
    $("model-info").textContent = `the server does not answer (${e})`;
  }
}

function colourOf(label) {
  const i = state.classes.indexOf(label);
  return PALETTE[(i < 0 ? 0 : i) % PALETTE.length];
}

// Send one encoded image; resolve with the answer record (or throw with the server's message).
async function recognise(blob) {
  const started = performance.now();
  const r = await fetch(`/v1/predict?top_k=${TOP_K}`, { method: "POST", headers: headers(blob.type || "image/jpeg"), body: blob });
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || `error ${r.status}`);
  body.roundTripMs = performance.now() - started;
  return body;
}

function updateReadout(answer) {
  const now = performance.now();
  state.answers = state.answers.filter((t) => now - t < 3000);
  state.answers.push(now);
  const live = state.stream && state.answers.length > 1;
  const fps = live ? (state.answers.length - 1) / ((now - state.answers[0]) / 1000) : 0;
  $("readout").textContent = `latency ${answer.roundTripMs.toFixed(0)} ms (server ${answer.elapsed_ms.toFixed(0)} ms)`
    + ` · fps ${live ? fps.toFixed(1) : "–"}`;
  $("readout").dataset.answers = String(Number($("readout").dataset.answers || 0) + 1);
}

// Faces: box and landmarks on the face; the label tag above it and the probability bars beside it,
// outside the face (left of it when there is no room on the right), like the annotated images.
function drawFaces(answer) {
  const scale = Math.max(canvas.width, canvas.height) / 640;
  const font = Math.round(14 * scale);
  const labels = [];
  for (const face of answer.faces) {
    const [x, y, w, h] = face.box;
    const colour = colourOf(face.label);
    ctx.lineWidth = Math.max(2, 2 * scale);
    ctx.strokeStyle = colour;
    ctx.strokeRect(x, y, w, h);
    ctx.fillStyle = "#ffd400";
    for (const [lx, ly] of face.landmarks || []) {
      ctx.beginPath(); ctx.arc(lx, ly, Math.max(2, 2 * scale), 0, 2 * Math.PI); ctx.fill();
    }
    const text = `${face.label} ${(face.confidence * 100).toFixed(0)}%`;
    ctx.font = `bold ${font}px system-ui, sans-serif`;
    const tw = ctx.measureText(text).width + 8;
    const ty = y - font - 8 >= 0 ? y - font - 8 : y + h + 2;
    ctx.fillStyle = colour; ctx.fillRect(x, ty, tw, font + 6);
    ctx.fillStyle = "#fff"; ctx.fillText(text, x + 4, ty + font);
    drawBars(face, x, y, w, font);
    labels.push(face.label);
  }
  canvas.dataset.labels = labels.join(",");
}

function drawBars(face, x, y, w, font) {
  const rows = face.top_k && face.top_k.length ? face.top_k
    : Object.entries(face.probabilities).sort((a, b) => b[1] - a[1]).slice(0, TOP_K);
  const small = Math.round(font * 0.85);
  ctx.font = `${small}px system-ui, sans-serif`;
  const nameW = Math.max(...rows.map(([n]) => ctx.measureText(n).width)) + 8;
  const barW = 5 * small;
  const total = nameW + barW + 4;
  const gap = Math.round(font * 0.5);
  const left = x + w + gap + total <= canvas.width ? x + w + gap : Math.max(0, x - gap - total);
  const rowH = small + 6;
  rows.forEach(([name, p], r) => {
    const top = y + r * (rowH + 2);
    ctx.fillStyle = "rgba(30,30,30,0.8)"; ctx.fillRect(left, top, total, rowH);
    ctx.fillStyle = "#fff"; ctx.fillText(name, left + 4, top + small);
    ctx.fillStyle = colourOf(name); ctx.fillRect(left + nameW, top + 2, Math.max(1, barW * p), rowH - 4);
  });
}

function listFaces(answer) {
  const list = $("results");
  list.replaceChildren();
  $("no-face").hidden = answer.faces.length > 0;  // said in a line of its own, not as face "1."
  for (const face of answer.faces) {
    const li = document.createElement("li");
    li.className = "face";
    li.textContent = `${face.label} ${(face.confidence * 100).toFixed(1)}%`;
    list.appendChild(li);
  }
}

function show(source, width, height, answer) {
  if (canvas.width !== width || canvas.height !== height) { canvas.width = width; canvas.height = height; }
  canvas.hidden = false;
  $("hint").hidden = true;
  ctx.drawImage(source, 0, 0, width, height);
  drawFaces(answer);
  listFaces(answer);
  updateReadout(answer);
  showStatus("");
}

// After an error nothing of the previous picture stays on screen: the error is the answer.
function clearResult() {
  canvas.hidden = true;
  canvas.dataset.labels = "";
  $("hint").hidden = false;
  $("results").replaceChildren();
  $("no-face").hidden = true;
  $("readout").textContent = "latency – · fps –";
}

function showError(e, what) {
  clearResult();
  showStatus(`${what}: ${e.message || e}`);
}

// ---- a photo ----
async function handleFile(file) {
  if (!file) return;
  stopCamera();
  showStatus("recognising…");
  try {
    const bitmap = await createImageBitmap(file);
    const answer = await recognise(file);
    show(bitmap, answer.width, answer.height, answer);
  } catch (e) {
    showError(e, file.name);
  }
}

$("file-input").addEventListener("change", (e) => handleFile(e.target.files[0]));
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); handleFile(e.dataTransfer.files[0]); });

// ---- the webcam: one frame every 1/rate s; a frame is skipped while the previous one is in flight ----
const grab = document.createElement("canvas");

async function sendFrame() {
  if (!state.stream || state.inFlight || !video.videoWidth) return;
  state.inFlight = true;
  const width = video.videoWidth, height = video.videoHeight;
  grab.width = width; grab.height = height;
  grab.getContext("2d").drawImage(video, 0, 0, width, height);
  try {
    const blob = await new Promise((ok) => grab.toBlob(ok, "image/jpeg", 0.85));
    const answer = await recognise(blob);
    if (state.stream) show(grab, width, height, answer);
  } catch (e) {
    if (state.stream) showError(e, "webcam frame");
  } finally {
    state.inFlight = false;
  }
}

function schedule() {
  clearInterval(state.timer);
  const rate = Math.min(15, Math.max(0.5, Number($("rate").value) || 4));
  state.timer = setInterval(sendFrame, 1000 / rate);
}

async function startCamera() {
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
  } catch (e) {
    showStatus(`no camera: ${e.message || e}`);
    return;
  }
  video.srcObject = state.stream;
  await video.play();
  $("camera-start").disabled = true; $("camera-stop").disabled = false;
  state.answers = [];
  schedule();
}

function stopCamera() {
  clearInterval(state.timer);
  if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
  state.stream = null;
  $("camera-start").disabled = false; $("camera-stop").disabled = true;
}

$("camera-start").addEventListener("click", startCamera);
$("camera-stop").addEventListener("click", stopCamera);
$("rate").addEventListener("change", () => { if (state.stream) schedule(); });
$("api-key").addEventListener("change", loadModel);
loadModel();
