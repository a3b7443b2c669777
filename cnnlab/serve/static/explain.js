// Explain page: the server's engine computes a convolution or a pooling (every window and every
// output value); this page only steps through its answer and lays the numbers out.
import { api, el, format, markNav } from "/static/common.js";

const GENERAL = "O = floor((W − K + 2P) / S) + 1";

class Stepper {
  constructor(section, endpoint) {
    this.section = section;
    this.endpoint = endpoint;
    this.slide = null;
    this.step = 0;          // how many output cells are computed so far
    this.timer = null;
    for (const input of section.querySelectorAll("[data-param]")) {
      input.addEventListener("change", () => this.load());
    }
    // the same stepping controls for every section: buttons, step label, error, formula
    const button = (action, text, extra = {}) => el("button", { "data-action": action, text, ...extra });
    const actions = { reset: () => this.go(0), prev: () => this.go(this.step - 1),
      next: () => this.go(this.step + 1), play: () => this.play() };
    section.querySelector(".controls").append(button("reset", "↺ Reset"),
      button("prev", "◀ Step back"), button("next", "Step ▶", { class: "primary" }),
      button("play", "▶ Play"), el("span", { class: "step-label", "data-role": "step" }));
    section.querySelector(".controls").after(el("div", { class: "error", "data-role": "error" }),
      el("p", { class: "formula", "data-role": "formula" }));
    for (const node of section.querySelectorAll("[data-action]")) {
      node.addEventListener("click", actions[node.dataset.action]);
    }
  }

  part(role) { return this.section.querySelector(`[data-role="${role}"]`); }

  params() {
    const out = {};
    for (const input of this.section.querySelectorAll("[data-param]")) {
      out[input.dataset.param] = input.type === "number" ? Number(input.value) : input.value;
    }
    return out;
  }

  async load() {
    this.stopPlaying();
    // a field being retyped (empty for a moment) is not a request yet
    if ([...this.section.querySelectorAll("[data-param]")].some((input) => input.value === "")) return;
    try {
      this.slide = await api(this.endpoint, { method: "POST", json: this.params() });
      this.part("error").textContent = "";
    } catch (error) {
      this.part("error").textContent = error.message;
      return;
    }
    const s = this.slide;
    const size = s.image.length;
    const padNote = s.kind === "conv" ? `, P = ${s.pad}` : "";
    this.part("formula").replaceChildren(
      el("span", { class: "general", text: `${GENERAL}   with W = ${size}, K = ${s.window}${padNote}, S = ${s.stride}:   ` }),
      el("strong", { text: s.formula }));
    if (s.dropped) {
      this.part("formula").append(el("div", { class: "warn",
        text: `floor drops the last ${s.dropped} row(s) and column(s): the window never reaches them.` }));
    }
    this.go(0);
  }

  get positions() {
    const rows = this.slide.output.length, cols = this.slide.output[0].length;
    return Array.from({ length: rows * cols }, (_, i) => [Math.floor(i / cols), i % cols]);
  }

  go(step) {
    if (!this.slide) return;
    const total = this.positions.length;
    this.step = Math.max(0, Math.min(step, total));
    this.render();
  }

  play() {
    if (this.timer) return this.stopPlaying();
    if (this.step >= this.positions.length) this.go(0);
    this.section.querySelector('[data-action="play"]').textContent = "⏸ Pause";
    this.timer = setInterval(() => {
      if (this.step >= this.positions.length) return this.stopPlaying();
      this.go(this.step + 1);
    }, 600);
  }

  stopPlaying() {
    clearInterval(this.timer);
    this.timer = null;
    this.section.querySelector('[data-action="play"]').textContent = "▶ Play";
  }

  render() {
    const s = this.slide;
    const positions = this.positions;
    const current = this.step > 0 ? positions[this.step - 1] : null;
    // the padded input, with the current window outlined
    const grid = s.padded;
    const k = s.window, pad = s.pad, size = s.image.length;
    const inWindow = (r, c) => current && r >= current[0] * s.stride && r < current[0] * s.stride + k
      && c >= current[1] * s.stride && c < current[1] * s.stride + k;
    const isPad = (r, c) => r < pad || c < pad || r >= pad + size || c >= pad + size;
    this.cells(this.part("input"), grid, (r, c) =>
      `${isPad(r, c) ? "pad" : ""} ${inWindow(r, c) ? "in-window" : ""}`);
    if (s.kernel) this.cells(this.part("kernel"), s.kernel, () => "kernel");
    const done = new Set(positions.slice(0, this.step).map(([r, c]) => `${r},${c}`));
    this.cells(this.part("output"), s.output, (r, c) => {
      if (current && r === current[0] && c === current[1]) return "current";
      return done.has(`${r},${c}`) ? "filled" : "empty";
    });
    this.part("step").textContent = `Step ${this.step} of ${positions.length}`
      + (current ? ` · output (${current[0]}, ${current[1]})` : "");
    this.part("sum").textContent = current ? this.arithmetic(current) : "Press Step to place the window on the first position.";
  }

  /** The multiply-adds (or the max / mean) for one output cell: terms and result from the server. */
  arithmetic([r, c]) {
    const s = this.slide;
    const window = s.windows[r][c].flat();
    const result = format(s.output[r][c]);
    if (s.kind === "conv") {
      const kernel = s.kernel.flat();
      const terms = window.map((v, i) => `${format(v)}×${kernel[i] < 0 ? `(${format(kernel[i])})` : format(kernel[i])}`);
      return `out[${r}][${c}] = ${terms.join(" + ")} = ${result}`;
    }
    const name = s.kind === "max" ? "max" : "mean";
    return `out[${r}][${c}] = ${name}(${window.map((v) => format(v)).join(", ")}) = ${result}`;
  }

  cells(node, rows, classes) {
    node.style.gridTemplateColumns = `repeat(${rows[0].length}, 34px)`;
    node.replaceChildren(...rows.flatMap((row, r) => row.map((value, c) =>
      el("div", { class: `cell ${classes(r, c)}`, "data-value": value, text: format(value, 2) }))));
  }
}

markNav();
new Stepper(document.getElementById("conv"), "/api/explain/conv").load();
new Stepper(document.getElementById("pool"), "/api/explain/pool").load();
