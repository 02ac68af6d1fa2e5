// resnetlab serve page: pick, drop or paste an image; it is POSTed to /predict and the top-5 drawn as bars.
// No external assets, no innerHTML with server data (labels are set as text).
"use strict";

const $ = (id) => document.getElementById(id);
const TOPK = 5;

function show(el, visible) { el.hidden = !visible; }

function setError(message) {
  $("error").textContent = message;
  show($("error"), Boolean(message));
  if (message) show($("result"), false);
}

async function loadInfo() {
  try {
    const res = await fetch("/info");
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const info = await res.json();
    $("model-name").textContent = info.model.arch;
    const size = info.preprocessing.input_size;
    $("model-meta").textContent =
      `${info.classes.length} classes: ${info.classes.slice(0, 12).join(", ")}` +
      `${info.classes.length > 12 ? ", ..." : ""} \u00b7 input ${size[1]}\u00d7${size[2]} \u00b7 ` +
      `${info.model.backend} ${info.model.precision}`;
    document.title = `resnetlab: ${info.model.arch}`;
  } catch (err) {
    $("model-meta").textContent = `could not read /info (${err.message})`;
  }
}

function renderBars(predictions) {
  const list = $("bars");
  list.replaceChildren();
  for (const p of predictions) {
    const li = document.createElement("li");
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = p.label;
    label.title = p.label;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.display = "block";
    fill.style.width = `${(100 * p.score).toFixed(1)}%`;
    track.appendChild(fill);
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = `${(100 * p.score).toFixed(1)}%`;
    li.append(label, track, pct);
    list.appendChild(li);
  }
  $("top-label").textContent = predictions[0].label;
  $("top-score").textContent = `(${(100 * predictions[0].score).toFixed(1)}%)`;
  show($("result"), true);
}

async function classify(file) {
  if (!file) return;
  setError("");
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.alt = file.name || "uploaded image";
  show(preview, true);
  $("status").textContent = `Classifying ${file.name || "image"}\u2026`;
  const form = new FormData();
  form.append("file", file, file.name || "image");
  const started = performance.now();
  try {
    const res = await fetch(`/predict?topk=${TOPK}`, { method: "POST", body: form });
    let body = null;
    try { body = await res.json(); } catch (_) { /* not JSON: reported below */ }
    if (!res.ok) {
      const detail = body && body.detail ? (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail)) : res.statusText;
      $("status").textContent = `The server refused ${file.name || "the image"} (HTTP ${res.status}).`;
      setError(detail);
      return;
    }
    renderBars(body);
    $("status").textContent = `${file.name || "image"}: ${Math.round(performance.now() - started)} ms`;
  } catch (err) {
    $("status").textContent = "Request failed.";
    setError(`could not reach the server: ${err.message}`);
  }
}

function setupDrop() {
  const drop = $("drop");
  $("file").addEventListener("change", (e) => classify(e.target.files[0]));
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("dragging"); });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.remove("dragging"); });
  }
  drop.addEventListener("drop", (e) => classify(e.dataTransfer.files[0]));
  document.addEventListener("paste", (e) => {
    const item = [...(e.clipboardData ? e.clipboardData.files : [])][0];
    if (item) classify(item);
  });
}

setupDrop();
loadInfo();
