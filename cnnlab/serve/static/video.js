// The Video page: upload a video, get it back annotated (a class per frame, or boxes), with a
// table of the per-frame results and the CSV.
import { api, el, fileDrop, format, markNav } from "/static/common.js";

const $ = (id) => document.getElementById(id);

function header(detect) {
  const names = detect ? ["frame", "seconds", "box (x0, y0, x1, y1)", "score"] : ["frame", "seconds", "class", "probability"];
  return el("tr", {}, ...names.map((name) => el("th", { text: name })));
}

function row(r, detect) {
  const cells = detect
    ? [r.frame, r.seconds, r.x0 ? `${r.x0}, ${r.y0}, ${r.x1}, ${r.y1}` : "none found", r.score ? format(Number(r.score), 3) : ""]
    : [r.frame, r.seconds, r.class, format(Number(r.probability), 3)];
  return el("tr", {}, ...cells.map((text) => el("td", { text: String(text) })));
}

async function run(file) {
  const detect = $("task").value === "yes";
  $("error").textContent = "";
  $("drop-text").textContent = `Processing ${file.name}…`;
  $("result-title").textContent = "The annotated video";
  try {
    // no threshold given: the detector's own, chosen by its recipe (what cnnlab detect uses)
    const given = $("threshold").value;
    const query = detect ? `detect=yes${given === "" ? "" : `&threshold=${Number(given)}`}`
      : `detect=no&model=${encodeURIComponent($("model").value)}`;
    const answer = await api(`/api/video?${query}`, { method: "POST", body: file, type: file.type || "application/octet-stream" });
    $("player").src = answer.video;
    $("player").hidden = false;
    $("links").replaceChildren(el("a", { href: answer.video, download: "annotated.mp4", text: "Download the video" }), " · ",
      el("a", { href: answer.csv, download: "results.csv", text: "the CSV" }));
    const skipped = answer.skipped.length ? `; ${answer.skipped.length} damaged packet(s) skipped` : "";
    $("result-title").textContent = `${answer.frames} frames, ${format(answer.duration, 2)} s at ${format(answer.fps, 2)} fps${skipped}`;
    $("summary").textContent = `${answer.model} ${detect ? "searched every frame" : "classified every frame"} in ${format(answer.seconds, 1)} s.` +
      (answer.rows_total > answer.rows.length ? ` The table shows the first ${answer.rows.length} of ${answer.rows_total} rows; the CSV has all.` : "");
    $("frame-results").replaceChildren(header(detect), ...answer.rows.map((r) => row(r, detect)));
  } catch (error) {
    $("error").textContent = error.message;
  } finally {
    $("drop-text").textContent = "Drop another video here, or click to choose one";
  }
}

$("task").addEventListener("change", () => {
  const detect = $("task").value === "yes";
  $("model-field").hidden = detect;
  $("threshold-field").hidden = !detect;
});
$("form").addEventListener("submit", (event) => event.preventDefault());
fileDrop($("drop"), $("upload"), run);

async function init() {
  markNav();
  const listing = await api("/api/models");
  $("model").replaceChildren(...listing.models.map((m) => el("option", { value: m.name, text: m.name })));
  $("model").value = listing.default;
}

init().catch((error) => { $("error").textContent = error.message; });
