// Train page: start a run on the server, follow it through server-sent events, draw the curves.
import { api, el, format, markNav } from "/static/common.js";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
let events = null;
let points = [], validation = [];   // the curves so far; statuses carry what is new from *_from
let frames = 0, following = true;    // timeline frames so far; the slider follows the newest

function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

/**
 * A line chart of `series` (training points, x = epochs so far) and `dots` (validation after each
 * epoch), x from 0 to `epochs`. Axis ranges follow the data; accuracy is drawn from 0 to 1.
 */
function niceStep(rough) {
  const power = 10 ** Math.floor(Math.log10(rough));
  return [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10].map((m) => m * power).find((m) => m >= rough);
}

function chart(node, series, dots, epochs, { fixed } = {}) {
  const W = 560, H = 260, left = 46, right = 12, top = 12, bottom = 42;
  const values = [...series.map((p) => p.y), ...dots.map((p) => p.y)].filter(Number.isFinite);
  // round axis steps (0.2, 0.25, 0.5, ...), so tick labels read as plain numbers
  const step = niceStep((values.length ? Math.max(...values) : 1) * 1.04 / 4);
  const [low, high] = fixed || [0, 4 * step];
  const x = (v) => left + (v / epochs) * (W - left - right);
  const y = (v) => top + (1 - (v - low) / (high - low)) * (H - top - bottom);
  const parts = [];
  for (let i = 0; i <= 4; i++) {
    const v = low + (i / 4) * (high - low);
    parts.push(svg("line", { class: "gridline", x1: left, x2: W - right, y1: y(v), y2: y(v) }));
    parts.push(svg("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end" }, format(v, 3)));
  }
  for (let e = 0; e <= epochs; e++) {
    parts.push(svg("text", { x: x(e), y: H - bottom + 16, "text-anchor": "middle" }, String(e)));
  }
  parts.push(svg("text", { x: (left + W - right) / 2, y: H - 4, "text-anchor": "middle" }, "epochs"));
  parts.push(svg("line", { class: "axis", x1: left, x2: left, y1: top, y2: H - bottom }));
  parts.push(svg("line", { class: "axis", x1: left, x2: W - right, y1: H - bottom, y2: H - bottom }));
  const points = series.filter((p) => Number.isFinite(p.y)).map((p) => `${x(p.x).toFixed(1)},${y(p.y).toFixed(1)}`);
  parts.push(svg("polyline", { class: "train", points: points.join(" "), "data-points": points.length }));
  for (const p of dots) parts.push(svg("circle", { class: "val", cx: x(p.x), cy: y(p.y), r: 4 }));
  if (!points.length && !dots.length) {
    parts.push(svg("text", { class: "chart-empty", x: (left + W - right) / 2, y: (top + H - bottom) / 2,
      "text-anchor": "middle" }, "The curves appear here when training starts."));
  }
  node.replaceChildren(...parts);
}

let ticker = null;
/** While a run goes on, the elapsed time counts up between the server's updates (a long batch
 *  must not look like a stalled page). */
function tick(seconds) {
  clearInterval(ticker);
  if (seconds === null) return;
  const since = performance.now();
  ticker = setInterval(() => {
    $("elapsed").textContent = `${(seconds + (performance.now() - since) / 1000).toFixed(0)} s`;
  }, 1000);
}

function show(status) {
  if (status.points) {
    points = points.slice(0, status.points_from).concat(status.points);
    validation = validation.slice(0, status.validation_from).concat(status.validation);
    Object.assign(status, { points, validation });
  }
  const state = status.state;
  $("state").textContent = state;
  $("state").className = `badge ${state}`;
  const running = ["starting", "running", "stopping"].includes(state);
  $("start").disabled = running;
  $("stop").disabled = !running || state === "stopping";
  if (state === "idle") return;
  const epochs = status.epochs;
  const steps = status.steps || 1;
  // the batch under way, not the last one finished: a big first batch is not "batch 0" for long
  $("where").textContent = !status.steps ? `${status.model}: loading data…`
    : running && status.step < status.steps
      ? `${status.model}: epoch ${status.epoch} of ${epochs}, batch ${status.step + 1} of ${status.steps} running…`
      : `${status.model}: epoch ${status.epoch} of ${epochs}, batch ${status.step} of ${status.steps}`;
  const done = status.epoch ? (status.epoch - 1 + status.step / steps) / epochs : 0;
  $("bar").style.width = `${Math.min(100, done * 100).toFixed(1)}%`;
  $("elapsed").textContent = `${status.seconds.toFixed(1)} s`;
  tick(running ? status.seconds : null);
  const span = Math.max(epochs, 1);
  chart($("loss-chart"), status.points.map((p) => ({ x: p.epoch, y: p.loss })),
    status.validation.map((v) => ({ x: v.epoch, y: v.loss })), span);
  chart($("accuracy-chart"), status.points.map((p) => ({ x: p.epoch, y: p.accuracy })),
    status.validation.map((v) => ({ x: v.epoch, y: v.accuracy })), span, { fixed: [0, 1] });
  $("error").textContent = status.error || "";
  showFrames(status.frames || 0);
  const ready = $("ready");
  if ((state === "done" || state === "stopped") && status.saved_to) {
    const last = status.validation[status.validation.length - 1];
    const score = last ? ` Validation accuracy ${(last.accuracy * 100).toFixed(1)}%.` : "";
    ready.replaceChildren(`Model ${status.model} is ready (saved as ${status.saved_to}; the server keeps the last ${status.kept_runs} runs).${score} `,
      el("a", { href: `/?model=${encodeURIComponent(status.model)}`, id: "use-model", text: "Draw with it →" }));
    ready.hidden = false;
  } else {
    ready.hidden = true;
  }
}

/** The timeline's frames: the slider picks one; it follows the newest unless moved back. */
function showFrames(count) {
  if (count === frames) return;
  frames = count;
  const slider = $("frame-slider");
  slider.max = Math.max(0, count - 1);
  slider.disabled = count < 2;
  if (following) slider.value = count - 1;
  showFrame(Number(slider.value));
}

function showFrame(number) {
  if (!frames) return;
  $("frame").src = `/api/train/frame?number=${number}`;
  $("frame").hidden = false;
  $("frames-note").textContent = `Frame ${number + 1} of ${frames}${number === 0 ? " (the initial weights)" : ""}: ` +
    "the first conv layer's filters (red +, blue −), its maps of one fixed test image, and what four filters of the last conv layer look for.";
}

$("frame-slider").addEventListener("input", (event) => {
  following = Number(event.target.value) === frames - 1;
  showFrame(Number(event.target.value));
});

function follow() {
  if (events) events.close();
  events = new EventSource("/api/train/events");
  events.onmessage = (message) => show(JSON.parse(message.data));
  events.addEventListener("end", () => { events.close(); events = null; });
}

$("data-kind").addEventListener("change", (event) => {
  $("folder-field").hidden = event.target.value !== "folder";
});
$("optimizer").addEventListener("change", (event) => {
  $("lr").value = event.target.value === "adam" ? "0.001" : "0.05";
});

$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const folder = $("data-kind").value === "folder";
  const request = {
    model: $("zoo").value,
    data: folder ? $("folder").value.trim() : "mnist_sample",
    epochs: Number($("epochs").value),
    batch_size: Number($("batch").value),
    optimizer: $("optimizer").value,
    lr: Number($("lr").value),
  };
  try {
    frames = 0;
    following = true;
    show(await api("/api/train", { method: "POST", json: request }));
    follow();
  } catch (error) {
    $("error").textContent = error.message;
  }
});

$("stop").addEventListener("click", async () => {
  try {
    show(await api("/api/train/stop", { method: "POST", json: {} }));
  } catch (error) {
    $("error").textContent = error.message;
  }
});

async function init() {
  markNav();
  // the empty charts first, before any answer from the server: axes, never a blank box
  chart($("loss-chart"), [], [], 2);
  chart($("accuracy-chart"), [], [], 2, { fixed: [0, 1] });
  const listing = await api("/api/models");
  $("zoo").replaceChildren(...listing.zoo.map((name) => el("option", { value: name, text: name })));
  const status = await api("/api/train/status");
  show(status);
  if (["starting", "running", "stopping"].includes(status.state)) follow();
}

init().catch((error) => { $("error").textContent = error.message; });
