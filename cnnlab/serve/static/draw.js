// Draw page: a drawing pad that asks the server for a prediction on every stroke, and shows the
// probabilities, the 28x28 the model saw, and every layer's feature maps.
import { api, bytes, drawMap, drawingPad, el, format, markNav } from "/static/common.js";

const $ = (id) => document.getElementById(id);
const pad = $("pad");
let modelName = new URLSearchParams(location.search).get("model");
let inFlight = false, again = false, lastResult = null;

// white ink on black, as MNIST's digits: every stroke asks for a prediction
const { clear: clearPad, ink } = drawingPad(pad, predictSoon);

$("clear").addEventListener("click", () => {
  drawingNumber += 1;
  again = false;
  clearPad();
  showEmpty();
});

/** An uploaded picture on the pad, scaled to fit and centred, so the pad shows what was sent. */
async function showOnPad(file) {
  clearPad();
  try {
    const picture = await createImageBitmap(file);
    const scale = Math.min(pad.width / picture.width, pad.height / picture.height);
    const w = picture.width * scale, h = picture.height * scale;
    ink.drawImage(picture, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
    picture.close();
  } catch {
    // a format the browser cannot draw: the server still reads it (or says why it cannot)
  }
}

$("upload").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  if (!file) return;
  drawingNumber += 1;               // an answer for the drawing before it no longer applies
  again = false;
  await showOnPad(file);
  await predict(file, file.type || "application/octet-stream");
  event.target.value = "";
});

/**
 * One request at a time (from the moment the canvas is captured); strokes that arrive meanwhile
 * are sent together when it returns. `drawingNumber` goes up on Clear and on model changes, so
 * an answer for a drawing that is gone is dropped instead of shown.
 */
let drawingNumber = 0;

function predictSoon() {
  if (inFlight) { again = true; return; }
  inFlight = true;
  pad.toBlob((blob) => predict(blob, "image/png"), "image/png");
}

async function predict(body, type) {
  inFlight = true;
  const asked = drawingNumber;
  try {
    const query = modelName ? `?model=${encodeURIComponent(modelName)}` : "";
    const result = await api(`/api/predict${query}`, { method: "POST", body, type });
    if (asked === drawingNumber) {
      $("error").textContent = "";
      show(result);
    }
  } catch (error) {
    $("error").textContent = error.message;
  } finally {
    inFlight = false;
    if (again) { again = false; predictSoon(); }
  }
}

function showEmpty() {
  $("top").textContent = "–";
  $("top-prob").textContent = "draw something";
  $("layers").replaceChildren();
  $("timing").textContent = "";
  for (const fill of document.querySelectorAll(".bars .fill")) fill.style.width = "0";
  for (const pct of document.querySelectorAll(".bars .pct")) pct.textContent = "";
  drawMap($("seen"), new Uint8Array(28 * 28), 0, 28, 28, { grey: true });
}

function buildBars(classes) {
  const bars = $("bars");
  bars.replaceChildren();
  classes.forEach((name, k) => {
    bars.append(el("div", { class: "label", text: name }),
      el("div", { class: "track" }, el("div", { class: "fill", id: `bar-${k}` })),
      el("div", { class: "pct", id: `pct-${k}` }));
  });
}

function show(result) {
  lastResult = result;
  const top = result.top;
  $("top").textContent = top.name;
  $("top").dataset.index = top.index;
  $("top-prob").textContent = `${(top.probability * 100).toFixed(1)}% sure`;
  result.probabilities.forEach((p, k) => {
    const fill = $(`bar-${k}`);
    fill.style.width = `${(p * 100).toFixed(1)}%`;
    fill.classList.toggle("top", k === top.index);
    $(`pct-${k}`).textContent = `${(p * 100).toFixed(1)}%`;
  });
  const seen = result.input;
  drawMap($("seen"), bytes(seen.data), 0, seen.height, seen.width,
    { channels: seen.channels, grey: true });
  $("timing").textContent = `Server: ${format(result.timing_ms.total, 1)} ms (network forward pass ${format(result.timing_ms.forward, 2)} ms)`;
  showLayers(result.layers);
}

/** Each layer: its name, type and shape, then one small canvas per feature map. */
function showLayers(layers) {
  const box = $("layers");
  box.replaceChildren();
  for (const [index, layer] of layers.entries()) {
    const data = bytes(layer.data);
    const maps = el("div", { class: "maps" });
    const shape = layer.shape.join(" × ");
    const head = el("div", { class: "layer-head" },
      el("span", { class: "name", text: layer.name }),
      el("span", { class: "muted small", text: layer.type }),
      el("span", { class: "shape", text: `output ${shape}` }));
    const vector = layer.height === 1;
    if (vector) {
      // one value per unit, wrapped into a near-square block
      const units = layer.width, cols = Math.ceil(Math.sqrt(units)), rows = Math.ceil(units / cols);
      const block = new Uint8Array(rows * cols);
      block.set(data.subarray(0, units));
      const canvas = el("canvas", { class: "pixelated map", "data-layer": index, "data-map": 0 });
      drawMap(canvas, block, 0, rows, cols);
      const scale = Math.max(2, Math.floor(96 / cols));
      canvas.style.width = `${cols * scale}px`;
      canvas.style.height = `${rows * scale}px`;
      canvas.addEventListener("click", () => zoom(layer, data, 0, rows, cols, block));
      maps.append(canvas);
    } else {
      const size = Math.max(28, Math.min(64, layer.height * 2));
      for (let m = 0; m < layer.count; m++) {
        const canvas = el("canvas", { class: "pixelated map", "data-layer": index, "data-map": m,
          title: `${layer.name}, map ${m + 1} of ${layer.count}` });
        drawMap(canvas, data, m * layer.height * layer.width, layer.height, layer.width);
        canvas.style.width = canvas.style.height = `${size}px`;
        canvas.addEventListener("click", () => zoom(layer, data, m));
        maps.append(canvas);
      }
    }
    box.append(el("div", { class: "layer", "data-layer": index }, head, maps));
  }
}

function zoom(layer, data, m, rows, cols, block) {
  const canvas = $("zoom");
  if (block) drawMap(canvas, block, 0, rows, cols);
  else drawMap(canvas, data, m * layer.height * layer.width, layer.height, layer.width);
  const which = layer.count > 1 ? `, map ${m + 1} of ${layer.count}` : ` (${layer.width} units)`;
  $("zoom-title").textContent = `${layer.name}${which}`;
  $("zoom-range").textContent = `${layer.height} × ${layer.width} · values from ${format(layer.min[m])} (dark) to ${format(layer.max[m])} (bright)`;
  $("overlay").classList.add("open");
}

function closeZoom() { $("overlay").classList.remove("open"); }
$("zoom-close").addEventListener("click", closeZoom);
$("overlay").addEventListener("click", (event) => { if (event.target.id === "overlay") closeZoom(); });
document.addEventListener("keydown", (event) => { if (event.key === "Escape") closeZoom(); });

async function loadModels() {
  const listing = await api("/api/models");
  if (!modelName || !listing.models.some((m) => m.name === modelName)) modelName = listing.default;
  const select = $("model");
  select.replaceChildren(...listing.models.map((m) =>
    el("option", { value: m.name, text: `${m.name} (${m.params.toLocaleString()} params)` })));
  select.value = modelName;
  const chosen = listing.models.find((m) => m.name === modelName);
  buildBars(chosen.classes);
  const [h, w, c] = chosen.input_shape;
  $("seen-note").textContent = c === 1 && h === 28 && w === 28
    ? "Cropped to the ink, scaled into 20×20 and centred in 28×28, as MNIST was."
    : `Resized to ${h}×${w}×${c}, the model's input.`;
  await loadSummary();
}

async function loadSummary() {
  const summary = await api(`/api/models/${encodeURIComponent(modelName)}/summary`);
  const rows = summary.layers.map((l) => el("tr", {},
    el("td", { text: `${l.name} (${l.type})` }), el("td", { text: l.output_shape.join(" × ") }),
    el("td", { class: "num", text: l.params.toLocaleString() }),
    el("td", { text: l.formula + (l.warning ? `  ⚠ ${l.warning}` : "") })));
  const table = el("table", { class: "summary" },
    el("tr", {}, el("th", { text: "Layer" }), el("th", { text: "Output" }),
      el("th", { text: "Params" }), el("th", { text: "Output size = floor((W − K + 2P) / S) + 1" })),
    ...rows);
  $("summary").replaceChildren(table,
    el("p", { class: "hint", text: `${summary.total_params.toLocaleString()} parameters in all.` }));
}

$("model").addEventListener("change", async (event) => {
  drawingNumber += 1;
  modelName = event.target.value;
  history.replaceState(null, "", `/?model=${encodeURIComponent(modelName)}`);
  await loadModels();
  if (lastResult) predictSoon();
});

markNav();
clearPad();
loadModels().then(showEmpty).catch((error) => { $("error").textContent = error.message; });
