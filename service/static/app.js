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
    explainBox = null; // a region of the previous sketch means nothing for this one
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

// Explanations -------------------------------------------------------------------------------
// The PNG is 480x224: the sketch in x 0..223, a 32-pixel gap, the photo in x 256..479 (model pixels).
const PNG_WIDTH = 480;
const PANEL = 224;
let explainBox = null; // [x0, y0, x1, y1] in sketch pixels, correspondence only
let explainRequest = 0; // newer requests win over slower older ones
let headsShown = 0;

const CAPTIONS = {
  correspondence: "Each sketch cell and its most similar photo cell after cross-attention (cosine), strongest first.",
  attention: "Where the [Ret] token looks in the last self-attention block (brighter = more attention); darkened cells were dropped by token selection.",
  influence: "The kernel pairs whose removal (set to 0) lowers the relation score most; anchors are feature-map positions, drawn on a 7×7 grid.",
  synthesis: "The sketch rebuilt from photo patches: each 16×16 patch replaced by the photo patch whose token matches best.",
};

function explainParams(format) {
  const params = new URLSearchParams({ kind: explainKind, format });
  if (explainKind === "correspondence") {
    params.set("level", $("explain-level").value);
    params.set("top", "12");
    if (explainBox) params.set("box", explainBox.join(","));
  } else if (explainKind === "attention") {
    if ($("explain-head").value !== "") params.set("head", $("explain-head").value);
  } else if (explainKind === "influence") {
    params.set("top", "10");
  } else if (explainKind === "synthesis") {
    params.set("source", $("explain-source").value);
    if ($("explain-source").value === "gallery") params.set("k", "5"); else params.set("top", "5");
  }
  return params;
}

function showExplainError(message) {
  const box = $("explain-error");
  box.textContent = message;
  box.hidden = !message;
}

function cellText(cell) {
  return `(${cell.row}, ${cell.col})`;
}

function listItems(body) {
  if (body.kind === "correspondence") {
    return body.pairs.map((pair) => `sketch ${cellText(pair.sketch_cell)} → photo ${cellText(pair.photo_cell)}: ${pair.score.toFixed(3)}`);
  }
  if (body.kind === "influence") {
    return body.pairs.map((pair) => `sketch ${cellText(pair.sketch_cell)} × photo ${cellText(pair.photo_cell)}: score −${pair.drop_percent.toFixed(2)} % without it (cosine ${pair.cosine.toFixed(3)})`);
  }
  if (body.kind === "attention") {
    const items = [];
    for (const side of ["sketch", "photo"]) {
      body[side].maps.forEach((map, head) => {
        let best = 0, bestCell = [0, 0];
        map.forEach((row, r) => row.forEach((value, c) => { if (value > best) { best = value; bestCell = [r, c]; } }));
        items.push(`${side}, head ${head}: strongest patch (${bestCell[0]}, ${bestCell[1]}) ${(100 * best).toFixed(1)} %, [Ret] itself ${(100 * body[side].ret_self[head]).toFixed(1)} %`);
      });
    }
    body.selection_layers.forEach((layer, i) => {
      const kept = body.sketch.selections[i].flat().filter(Boolean).length;
      items.push(`selection after block ${layer + 1}: sketch kept ${kept} of ${body.grid * body.grid} tokens`);
    });
    return items;
  }
  const counts = new Map();
  for (const patch of body.patches) {
    for (const match of patch.matches) counts.set(match.image_id, (counts.get(match.image_id) || 0) + 1);
  }
  const ranked = [...counts.entries()].sort((a, b) => b[1] - a[1]);
  const unit = body.source === "gallery" ? `of ${body.k} nearest patches per sketch patch` : "patches";
  return ranked.slice(0, 12).map(([id, count]) => `image ${id}: ${count} ${unit}`);
}

function syncHeads(body) {
  if (body.kind !== "attention" || body.heads === headsShown) return;
  const select = $("explain-head");
  const chosen = select.value;
  select.replaceChildren(new Option("Mean of all heads", ""));
  for (let head = 0; head < body.heads; head++) select.append(new Option(`Head ${head}`, String(head)));
  select.value = chosen !== "" && Number(chosen) < body.heads ? chosen : "";
  headsShown = body.heads;
}

async function explain() {
  if (lastQuery === null || selected === null) return;
  const panel = $("explain-panel");
  panel.hidden = false;
  panel.dataset.kind = explainKind;
  for (const group of panel.querySelectorAll("[data-for]")) group.hidden = group.dataset.for !== explainKind;
  $("explain-clear-box").hidden = explainBox === null;
  $("explain-caption").textContent = CAPTIONS[explainKind] + (explainKind === "correspondence" && explainBox
    ? ` Region: x ${explainBox[0]}–${explainBox[2]}, y ${explainBox[1]}–${explainBox[3]}.` : "");
  showExplainError("");
  const request = ++explainRequest;
  const base = `/explain/${encodeURIComponent(lastQuery)}/${selected}`;
  const pairs = $("explain-pairs");
  try {
    const response = await fetch(`${base}?${explainParams("json")}`);
    if (!response.ok) throw new Error(await errorMessage(response));
    const body = await response.json();
    if (request !== explainRequest) return;
    const image = $("explain-image");
    await new Promise((resolve, reject) => {
      image.onload = resolve;
      image.onerror = () => reject(new Error("the explanation image could not be loaded"));
      image.src = `${base}?${explainParams("png")}&t=${Date.now()}`;
    });
    if (request !== explainRequest) return;
    $("explain-figure").hidden = false;
    image.alt = `${explainKind} explanation: the sketch on the left, the ${explainKind === "synthesis" ? "synthesised photo" : "photo"} on the right`;
    $("explain-drag").hidden = true;
    syncHeads(body);
    if (body.kind === "influence") {
      $("explain-caption").textContent += ` Relation score ${body.relation_score.toFixed(3)}.`;
    }
    pairs.replaceChildren(...listItems(body).slice(0, 24).map((text) => {
      const li = document.createElement("li");
      li.textContent = text;
      return li;
    }));
    panel.scrollIntoView({ behavior: "smooth", block: "nearest" });
  } catch (error) {
    if (request !== explainRequest) return;
    pairs.replaceChildren();
    $("explain-figure").hidden = true; // the previous picture would be mistaken for this answer
    showExplainError(`Explanation failed: ${error.message}`);
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
for (const id of ["explain-level", "explain-head", "explain-source"]) $(id).addEventListener("change", explain);
$("explain-clear-box").addEventListener("click", () => { explainBox = null; explain(); });

// Dragging a box on the sketch half of the picture chooses a sketch region (correspondence).
let dragStart = null;
function modelPoint(event) {
  const box = $("explain-image").getBoundingClientRect();
  const x = ((event.clientX - box.left) * PNG_WIDTH) / box.width;
  const y = ((event.clientY - box.top) * PANEL) / box.height;
  return [Math.min(Math.max(x, 0), PANEL), Math.min(Math.max(y, 0), PANEL)];
}
function showDrag(a, b) {
  const image = $("explain-image");
  const scale = image.getBoundingClientRect().width / PNG_WIDTH;
  const drag = $("explain-drag");
  drag.style.left = `${Math.min(a[0], b[0]) * scale}px`;
  drag.style.top = `${Math.min(a[1], b[1]) * scale}px`;
  drag.style.width = `${Math.abs(a[0] - b[0]) * scale}px`;
  drag.style.height = `${Math.abs(a[1] - b[1]) * scale}px`;
  drag.hidden = false;
}
$("explain-figure").addEventListener("pointerdown", (event) => {
  if (explainKind !== "correspondence") return;
  const point = modelPoint(event);
  const box = $("explain-image").getBoundingClientRect();
  if ((event.clientX - box.left) * PNG_WIDTH / box.width >= PANEL) return; // the photo half
  event.preventDefault();
  $("explain-figure").setPointerCapture(event.pointerId);
  dragStart = point;
  showDrag(point, point);
});
$("explain-figure").addEventListener("pointermove", (event) => {
  if (dragStart) showDrag(dragStart, modelPoint(event));
});
$("explain-figure").addEventListener("pointerup", (event) => {
  if (!dragStart) return;
  const end = modelPoint(event);
  const start = dragStart;
  dragStart = null;
  let x0 = Math.floor(Math.min(start[0], end[0])), x1 = Math.ceil(Math.max(start[0], end[0]));
  let y0 = Math.floor(Math.min(start[1], end[1])), y1 = Math.ceil(Math.max(start[1], end[1]));
  if (x1 - x0 < 2 || y1 - y0 < 2) { // a click: the one cell under the pointer
    x0 = Math.max(0, x0 - 1); y0 = Math.max(0, y0 - 1); x1 = Math.min(PANEL, x0 + 2); y1 = Math.min(PANEL, y0 + 2);
  }
  explainBox = [x0, y0, x1, y1];
  explain();
});
$("explain-figure").addEventListener("pointercancel", () => { dragStart = null; $("explain-drag").hidden = true; });

redraw();
