// Shared helpers for the pages: calling the API, building elements, drawing 8-bit maps.

// The server's token came in the address (?token=...) and is a cookie now: take it out of the
// address bar, so that it is not bookmarked, kept in history or shown in a screenshot.
if (new URLSearchParams(location.search).has("token")) {
  history.replaceState(null, "", location.pathname + location.hash);
}

/** Call the JSON API; a 4xx/5xx answer throws an Error carrying the server's message. */
export async function api(path, { method = "GET", json, body, type } = {}) {
  const options = { method, headers: {} };
  if (json !== undefined) {
    options.body = JSON.stringify(json);
    options.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    options.body = body;
    options.headers["Content-Type"] = type || "application/octet-stream";
  }
  const response = await fetch(path, options);
  const payload = await response.json().catch(() => ({ error: response.statusText }));
  if (!response.ok) throw new Error(payload.error || `HTTP ${response.status}`);
  return payload;
}

/** el("div", {class: "card"}, child, "text") */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

/** base64 -> Uint8Array */
export function bytes(base64) {
  const text = atob(base64);
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
}

// A perceptually even dark-to-bright colour scale (viridis' anchor colours), as a 256-entry table.
const ANCHORS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
export const COLOURS = (() => {
  const table = new Uint8Array(256 * 3);
  for (let v = 0; v < 256; v++) {
    const t = (v / 255) * (ANCHORS.length - 1);
    const i = Math.min(Math.floor(t), ANCHORS.length - 2), f = t - i;
    for (let c = 0; c < 3; c++) table[v * 3 + c] = Math.round(ANCHORS[i][c] * (1 - f) + ANCHORS[i + 1][c] * f);
  }
  return table;
})();

/**
 * Draw an h x w map of 8-bit values (from `data` at `offset`) on a canvas of that many pixels.
 * `channels` 1 uses the colour scale (or grey with `grey`), 3 is RGB.
 */
export function drawMap(canvas, data, offset, h, w, { channels = 1, grey = false } = {}) {
  canvas.width = w;
  canvas.height = h;
  const context = canvas.getContext("2d");
  const image = context.createImageData(w, h);
  for (let p = 0; p < h * w; p++) {
    let r, g, b;
    if (channels === 3) {
      [r, g, b] = [data[offset + p * 3], data[offset + p * 3 + 1], data[offset + p * 3 + 2]];
    } else {
      const v = data[offset + p * channels];
      if (grey) r = g = b = v;
      else [r, g, b] = [COLOURS[v * 3], COLOURS[v * 3 + 1], COLOURS[v * 3 + 2]];
    }
    image.data.set([r, g, b, 255], p * 4);
  }
  context.putImageData(image, 0, 0);
}

/** The top bar of every page: the name, and links to the pages with the current one marked. */
export function markNav() {
  const pages = [["/", "Draw"], ["/train", "Train"], ["/explain", "Explain"], ["/search", "Search"],
    ["/detect", "Detect"], ["/video", "Video"], ["/inside", "Inside"]];
  const links = pages.map(([href, text]) =>
    el("a", { href, text, class: href === location.pathname ? "active" : "" }));
  const brand = el("div", { class: "brand" }, "cnn", el("span", { text: "lab" }));
  document.querySelector("header.top").prepend(brand, el("nav", {}, ...links));
}

export const format = (x, digits = 3) =>
  Number.isInteger(x) ? String(x) : Number(x).toFixed(digits).replace(/\.?0+$/, "");

/** A file input behind a label that also takes a dropped file: `onFile(file)` either way. */
export function fileDrop(label, input, onFile) {
  input.addEventListener("change", () => input.files[0] && onFile(input.files[0]));
  label.addEventListener("dragover", (event) => { event.preventDefault(); label.classList.add("over"); });
  label.addEventListener("dragleave", () => label.classList.remove("over"));
  label.addEventListener("drop", (event) => {
    event.preventDefault();
    label.classList.remove("over");
    if (event.dataTransfer.files[0]) onFile(event.dataTransfer.files[0]);
  });
}

/**
 * A canvas to draw on with the pointer: white ink on black. `onStroke()` is called as the ink
 * moves and when a stroke ends. Returns `{ clear, ink }` (ink: the canvas' 2-D context).
 */
export function drawingPad(pad, onStroke) {
  const ink = pad.getContext("2d");
  let drawing = false, last = null;
  const clear = () => {
    ink.fillStyle = "#000";
    ink.fillRect(0, 0, pad.width, pad.height);
  };
  const point = (event) => {
    const box = pad.getBoundingClientRect();
    return [(event.clientX - box.left) * pad.width / box.width, (event.clientY - box.top) * pad.height / box.height];
  };
  const stroke = (to) => {
    ink.strokeStyle = "#fff";
    ink.lineWidth = pad.width / 14;
    ink.lineCap = ink.lineJoin = "round";
    ink.beginPath();
    ink.moveTo(...(last || to));
    ink.lineTo(...to);
    ink.stroke();
    last = to;
  };
  pad.addEventListener("pointerdown", (event) => {
    drawing = true;
    last = null;
    pad.setPointerCapture(event.pointerId);
    stroke(point(event));
  });
  pad.addEventListener("pointermove", (event) => {
    if (!drawing) return;
    stroke(point(event));
    onStroke();
  });
  for (const end of ["pointerup", "pointercancel"]) {
    pad.addEventListener(end, () => {
      if (!drawing) return;
      drawing = false;
      onStroke();
    });
  }
  return { clear, ink };
}
