// The Detect page: upload a photo, draw the boxes the server finds on it, with their scores.
import { api, el, fileDrop, markNav, format } from "/static/common.js";

const $ = (id) => document.getElementById(id);
let current = null;

async function run(file) {
  current = file;
  $("error").textContent = "";
  const picture = new Image();
  picture.src = URL.createObjectURL(file);
  await picture.decode();
  try {
    // empty until the detector has said its own threshold: the server then uses that one
    const given = $("threshold").value;
    const query = given === "" ? "" : `?threshold=${Number(given)}`;
    const answer = await api(`/api/detect${query}`, { method: "POST", body: file, type: file.type });
    draw(picture, answer);
    const count = answer.detections.length;
    $("result-title").textContent = count ? `${count} ${answer.target}${count > 1 ? "s" : ""} found` :
      `No ${answer.target} scores ${answer.threshold} or more`;
    $("list").replaceChildren(...answer.detections.map((d) => el("li", {
      text: `score ${format(d.score, 3)} · box (${d.box.map((v) => Math.round(v)).join(", ")})` })));
    $("summary").textContent = `${answer.model}, ${answer.width}×${answer.height} photo, ${format(answer.ms, 0)} ms. ` +
      "The score is the model's probability of its class for that window, from 0 to 1.";
  } catch (error) {
    $("error").textContent = error.message;
  }
}

function draw(picture, answer) {
  const canvas = $("canvas");
  canvas.width = answer.width;
  canvas.height = answer.height;
  const context = canvas.getContext("2d");
  context.drawImage(picture, 0, 0);
  // the canvas is shown at most 640 px wide: lines and labels keep one size on screen
  const shown = Math.min(640, canvas.parentElement.clientWidth) / answer.width;
  const line = 2 / shown;
  context.lineWidth = line;
  context.font = `${13 / shown}px system-ui, sans-serif`;
  for (const d of answer.detections) {
    const [x0, y0, x1, y1] = d.box;
    context.strokeStyle = "#ff3030";
    context.strokeRect(x0, y0, x1 - x0, y1 - y0);
    const label = format(d.score, 2);
    const width = context.measureText(label).width + 8 / shown;
    context.fillStyle = "#ff3030";
    const height = 17 / shown, top = Math.max(0, y0 - height);
    context.fillRect(x0, top, width, height);
    context.fillStyle = "#fff";
    context.fillText(label, x0 + 4 / shown, top + 13 / shown);
  }
}

async function describe() {
  const info = await api("/api/detect/info");
  const [h, w] = info.window;
  $("title").textContent = `Find ${info.target.replaceAll("_", " ")}s in a photo`;
  const stages = info.stages.length;
  $("what").textContent = `${info.model}, a classifier that tells a ${w}×${h} ${info.target} from anything else` +
    (stages ? ` (then ${stages} more network${stages > 1 ? "s" : ""} look again at each window it passes),` : ",");
  // the detector's own threshold, chosen by its recipe: what cnnlab detect uses too
  if ($("threshold").value === "") $("threshold").value = info.threshold;
}

markNav();
describe().catch((error) => { $("error").textContent = error.message; });
$("threshold").addEventListener("change", () => current && run(current));
fileDrop($("drop"), $("upload"), run);
