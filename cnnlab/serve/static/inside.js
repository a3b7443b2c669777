// The Inside page: a filter's visualisation, its top patches, its map on a drawing or a photo,
// and the embedding map of the model's dataset (its held-out split, or the server's photo index).
import { api, bytes, drawMap, drawingPad, el, fileDrop, format, markNav } from "/static/common.js";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
  "#7f7f7f", "#bcbd22", "#17becf"];
let layers = [], asked = 0, lastImage = null, mapTimer = null;

const model = () => $("model").value;
const layer = () => layers.find((l) => l.name === $("layer").value);
const query = (extra = "") =>
  `?model=${encodeURIComponent(model())}&layer=${encodeURIComponent($("layer").value)}&filter=${$("filter").value}${extra}`;
const png = (base64) => `data:image/png;base64,${base64}`;

function describeLayer() {
  const l = layer();
  if (!l) return;
  $("filter").max = l.filters - 1;
  const [h, w] = l.receptive_field;
  $("layer-info").textContent = `${l.name} (${l.type}): output ${l.shape.join("×")}, ${l.filters} filters; ` +
    `each output cell sees ${h}×${w} input pixels (its receptive field).`;
}

async function showFilter() {
  const number = ++asked;
  const l = layer();
  if (!l) return;
  $("error").textContent = "";
  $("visual-title").textContent = `What ${l.name} filter ${$("filter").value} looks for`;
  $("visual-note").textContent = "Computing (gradient ascent on the input)…";
  $("visual").classList.add("stale");            // the last filter's picture, until this one's
  $("patches").classList.add("stale");
  try {
    const answer = await api(`/api/inside/filter${query()}`);
    if (number !== asked) return;
    $("visual").src = png(answer.visualisation);
    $("visual").classList.remove("stale");
    $("patches").classList.remove("stale");
    const [h, w] = answer.size;
    $("visual-note").textContent = (answer.where === "centre"
      ? `The ${h}×${w} pixels one cell of this filter sees, made to excite it most (it reaches ${format(answer.activation, 2)}).`
      : `A ${h}×${w} image made to raise this filter's mean over its whole map to ${format(answer.activation, 2)}.`) +
      " Pixels: black 0 … white 1, the model's input range.";
    $("patches").replaceChildren(...answer.patches.map((p) => el("figure", {},
      el("img", { src: png(p.png), alt: `image ${p.image}`, title: `image ${p.image} of the dataset, box ${p.box.join(", ")}` }),
      el("figcaption", { text: format(p.activation, 2) }))));
    $("patches-note").textContent = answer.patches.length
      ? `Each crop is the receptive field of the cell that fired (clipped to the image); below it, the activation.`
      : "This model was not trained on a dataset the server has, and the server has no photo index (cnnlab serve --index), so there are no patches to show.";
    if (lastImage) showMap(lastImage.body, lastImage.type);
  } catch (error) {
    if (number === asked) $("error").textContent = error.message;
  }
}

async function showMap(body, type) {
  lastImage = { body, type };
  try {
    const answer = await api(`/api/inside/map${query()}`, { method: "POST", body, type });
    const seen = new Image();
    seen.src = png(answer.input);
    await seen.decode();
    const canvas = $("model-saw");
    canvas.width = seen.width;
    canvas.height = seen.height;
    canvas.getContext("2d").drawImage(seen, 0, 0);
    const m = answer.map;
    drawMap($("map"), bytes(m.data), 0, m.height, m.width);
    $("map-note").textContent = m.max[0] === m.min[0]
      ? `${answer.layer} filter ${answer.filter}: ${m.height}×${m.width} map, ${format(m.max[0], 2)} everywhere: ` +
        "this filter does not respond to anything in your image."
      : `${answer.layer} filter ${answer.filter}: ${m.height}×${m.width} map, ` +
        `dark = ${format(m.min[0], 2)} (its lowest here), yellow = ${format(m.max[0], 2)} (its highest).`;
  } catch (error) {
    $("error").textContent = error.message;
  }
}

async function showEmbedding() {
  const box = $("embedding");
  try {
    const answer = await api(`/api/inside/embedding?model=${encodeURIComponent(model())}`);
    const xs = answer.points.map((p) => p.x), ys = answer.points.map((p) => p.y);
    const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    const sx = (v) => 16 + (v - x0) / (x1 - x0 || 1) * 608, sy = (v) => 404 - (v - y0) / (y1 - y0 || 1) * 388;
    const dots = answer.points.map((p) => {
      const dot = document.createElementNS(SVG, "circle");
      Object.entries({ cx: sx(p.x).toFixed(1), cy: sy(p.y).toFixed(1), r: 3.5, fill: PALETTE[p.label % 10], "fill-opacity": 0.8 })
        .forEach(([k, v]) => dot.setAttribute(k, v));
      const title = document.createElementNS(SVG, "title");
      title.textContent = `image ${p.image}: ${answer.classes[p.label]}`;
      dot.append(title);
      dot.addEventListener("click", () => pick(p, answer.classes));
      return dot;
    });
    box.replaceChildren(...dots);
    $("map-info").textContent = `Each dot is one of ${answer.points.length} images of ${answer.dataset}, placed by its ` +
      "penultimate-layer features projected to 2-D by PCA (the plane in which they vary most), coloured by its true class. Click a dot to see its image.";
    $("legend").replaceChildren(...answer.classes.map((name, k) => {
      const dot = el("span", { class: "legend-dot" });
      dot.style.background = PALETTE[k % 10];     // a property, not a style attribute (the CSP)
      return el("div", { class: "small" }, dot, name);
    }));
  } catch (error) {
    box.replaceChildren();
    $("map-info").textContent = error.message;
  }
}

async function pick(point, classes) {
  const answer = await api(`/api/inside/image?model=${encodeURIComponent(model())}&image=${point.image}`);
  $("picked").src = png(answer.png);
  $("picked").hidden = false;
  $("picked-note").textContent = `Image ${point.image}, true class ${classes[point.label]}.`;
}

async function loadLayers() {
  const answer = await api(`/api/inside/layers?model=${encodeURIComponent(model())}`);
  layers = answer.layers;
  if (!layers.length) {
    $("error").textContent = `${answer.model} has no conv layer to look inside.`;
    return;
  }
  $("layer").replaceChildren(...layers.map((l) => el("option", { value: l.name, text: `${l.name} (${l.filters} filters)` })));
  $("layer").value = layers[layers.length - 1].name;
  $("filter").value = 0;
  describeLayer();
  await Promise.all([showFilter(), showEmbedding()]);
}

function step(by) {
  const count = layer().filters;
  $("filter").value = (Number($("filter").value) + by + count) % count;
  showFilter();
}

const { clear } = drawingPad($("pad"), () => {
  clearTimeout(mapTimer);
  mapTimer = setTimeout(() => $("pad").toBlob((blob) => showMap(blob, "image/png"), "image/png"), 150);
});
$("clear").addEventListener("click", () => { clear(); lastImage = null; });
$("form").addEventListener("submit", (event) => event.preventDefault());
fileDrop($("drop"), $("upload"), (file) => showMap(file, file.type || "application/octet-stream"));
$("model").addEventListener("change", () => loadLayers().catch((error) => { $("error").textContent = error.message; }));
$("layer").addEventListener("change", () => { $("filter").value = 0; describeLayer(); showFilter(); });
$("filter").addEventListener("change", showFilter);
$("previous").addEventListener("click", () => step(-1));
$("next").addEventListener("click", () => step(1));

async function init() {
  markNav();
  clear();
  const listing = await api("/api/models");
  $("model").replaceChildren(...listing.models.map((m) => el("option", { value: m.name, text: m.name })));
  $("model").value = new URLSearchParams(location.search).get("model") || listing.default;
  await loadLayers();
}

init().catch((error) => { $("error").textContent = error.message; });
