// Sketch search page: a drawing canvas, search against POST /search, explanations from /explain.
// No build step and no network beyond this server.
"use strict";

const canvas = document.getElementById("canvas");
const ctx = canvas.getContext("2d");
const strokes = []; // each stroke: {width, points: [[x, y], ...]} in canvas pixels
let current = null;
let uploaded = null; // a File chosen instead of drawing
let lastQuery = null;
let selected = null;
let explainKind = "correspondence";
let liveTimer = null;

const $ = (id) => document.getElementById(id);

function redraw() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.strokeStyle = "#000";
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  for (const stroke of strokes) {
    ctx.lineWidth = stroke.width;
    ctx.beginPath();
    stroke.points.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    if (stroke.points.length === 1) ctx.lineTo(stroke.points[0][0] + 0.1, stroke.points[0][1]);
    ctx.stroke();
  }
}

function canvasPoint(event) {
  const box = canvas.getBoundingClientRect();
  return [((event.clientX - box.left) * canvas.width) / box.width,
          ((event.clientY - box.top) * canvas.height) / box.height];
}

canvas.addEventListener("pointerdown", (event) => {
  event.preventDefault();
  canvas.setPointerCapture(event.pointerId);
  uploaded = null;
  current = { width: Number($("width").value) * (canvas.width / 448), points: [canvasPoint(event)] };
  strokes.push(current);
  redraw();
});
canvas.addEventListener("pointermove", (event) => {
  if (!current) return;
  for (const e of event.getCoalescedEvents ? event.getCoalescedEvents() : [event]) {
    current.points.push(canvasPoint(e));
  }
  redraw();
});
function endStroke() {
  if (!current) return;
  current = null;
  if ($("live").checked) {
    clearTimeout(liveTimer);
    liveTimer = setTimeout(search, 400);
  }
}
canvas.addEventListener("pointerup", endStroke);
canvas.addEventListener("pointercancel", endStroke);

$("undo").addEventListener("click", () => { strokes.pop(); redraw(); });
$("clear").addEventListener("click", () => { strokes.length = 0; uploaded = null; redraw(); });
$("width").addEventListener("input", () => { $("width-value").textContent = $("width").value; });
$("search").addEventListener("click", search);
$("upload").addEventListener("change", () => {
  uploaded = $("upload").files[0] || null;
  if (uploaded) search();
});
document.addEventListener("keydown", (event) => {
  if ((event.ctrlKey || event.metaKey) && event.key === "z") { strokes.pop(); redraw(); }
});

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = !message;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && body.error) return `${body.error.message} (${response.status} ${body.error.code})`;
  } catch (_) { /* not JSON */ }
  return `The server answered ${response.status} ${response.statusText}`;
}

function sketchBlob() {
  if (uploaded) return Promise.resolve(uploaded);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

async function search() {
  if (!uploaded && strokes.length === 0) {
    showError("Draw something first, or upload a sketch image.");
    return;
  }
  showError("");
  $("status").textContent = "Searching…";
  const form = new FormData();
  form.append("sketch", await sketchBlob(), "sketch.png");
  const params = new URLSearchParams({ k: $("k").value, shortlist: $("shortlist").value });
  try {
    const response = await fetch(`/search?${params}`, { method: "POST", body: form });
    if (!response.ok) throw new Error(await errorMessage(response));
    const body = await response.json();
    lastQuery = body.query_id;
    renderResults(body);
    $("status").textContent = `${body.results.length} results from ${body.index.size} images in “${body.index.name}”.`;
  } catch (error) {
    $("status").textContent = "";
    showError(`Search failed: ${error.message}`);
  }
}

function renderResults(body) {
  const list = $("results");
  list.replaceChildren();
  const t = body.timings_ms;
  $("timings").textContent = `decode ${t.decode.toFixed(0)} ms · embed ${t.embed.toFixed(0)} ms · ANN ${t.ann.toFixed(1)} ms · re-rank ${t.rerank.toFixed(0)} ms · total ${t.total.toFixed(0)} ms`;
  for (const result of body.results) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "result";
    const label = result.label || `image ${result.image_id}`;
    const name = (result.metadata && (result.metadata.annotation || result.metadata.name)) || label;
    button.setAttribute("aria-label", `Result ${result.rank}: ${name}. Show why it matched.`);
    const img = document.createElement("img");
    img.src = `${result.image_url}?size=200`;
    img.alt = name;
    const caption = document.createElement("span");
    caption.className = "label";
    caption.textContent = `${result.rank}. ${name}`;
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = result.relation_score === null
      ? `ANN ${result.ann_score.toFixed(3)}`
      : `relation ${result.relation_score.toFixed(3)} · ANN ${result.ann_score.toFixed(3)}`;
    button.append(img, caption, score);
    button.addEventListener("click", () => { selected = result.image_id; explain(); });
    item.append(button);
    list.append(item);
  }
}

async function explain() {
  if (lastQuery === null || selected === null) return;
  const panel = $("explain-panel");
  panel.hidden = false;
  showError("");
  const base = `/explain/${encodeURIComponent(lastQuery)}/${selected}`;
  const kind = new URLSearchParams({ kind: explainKind });
  try {
    const response = await fetch(`${base}?${kind}&format=json`);
    if (!response.ok) throw new Error(await errorMessage(response));
    const body = await response.json();
    const image = $("explain-image");
    await new Promise((resolve, reject) => {
      image.onload = resolve;
      image.onerror = () => reject(new Error("the explanation image could not be loaded"));
      image.src = `${base}?${kind}&format=png&t=${Date.now()}`;
    });
    const pairs = $("explain-pairs");
    pairs.replaceChildren();
    for (const pair of (body.pairs || []).slice(0, 12)) {
      const li = document.createElement("li");
      li.textContent = `sketch (${pair.sketch_cell.row}, ${pair.sketch_cell.col}) → photo (${pair.photo_cell.row}, ${pair.photo_cell.col}): ${pair.score.toFixed(3)}`;
      pairs.append(li);
    }
    panel.scrollIntoView({ behavior: "smooth", block: "nearest" });
  } catch (error) {
    showError(`Explanation failed: ${error.message}`);
  }
}

$("explain-kinds").addEventListener("click", (event) => {
  const button = event.target.closest("button[data-kind]");
  if (!button) return;
  explainKind = button.dataset.kind;
  for (const other of $("explain-kinds").querySelectorAll("button")) {
    other.setAttribute("aria-pressed", String(other === button));
  }
  explain();
});

redraw();
