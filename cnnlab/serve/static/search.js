// The Search page: upload a photo, show the indexed photos most like it with their similarity.
import { api, el, fileDrop, markNav, format } from "/static/common.js";

const $ = (id) => document.getElementById(id);
let current = null;                       // the last photo searched for, to search again with a new k

async function showIndex() {
  const info = await api("/api/search/info");
  if (!info.indexed) {
    $("index-info").textContent = "This server has no photo index. Make one with " +
      "`cnnlab index FOLDER --out photos.index`, then start `cnnlab serve --index photos.index`.";
    $("upload").disabled = true;
    return;
  }
  $("index-info").textContent = `${info.indexed.toLocaleString()} photos from ${info.root}, ` +
    `embedded by ${info.model} (${info.source}).`;
}

async function search(file) {
  current = file;
  $("error").textContent = "";
  $("query").src = URL.createObjectURL(file);
  $("query").hidden = false;
  $("drop-text").hidden = true;
  try {
    const k = Math.max(1, Math.min(50, Number($("k").value) || 8));
    const answer = await api(`/api/search?k=${k}`, { method: "POST", body: file, type: file.type });
    $("results").replaceChildren(...answer.hits.map((hit, rank) => el("figure", { class: "hit" },
      el("img", { src: hit.image, alt: hit.path, title: hit.path }),
      el("figcaption", {},
        el("span", { class: "rank", text: `#${rank + 1}` }),
        el("span", { class: "similarity", text: `similarity ${format(hit.similarity, 3)}` }),
        el("span", { class: "path", text: hit.path })))));
    $("timing").textContent = `Embedded and searched in ${format(answer.ms, 1)} ms.`;
  } catch (error) {
    $("error").textContent = error.message;
  }
}

markNav();
showIndex().catch((error) => { $("index-info").textContent = error.message; });
$("k").addEventListener("change", () => current && search(current));
fileDrop($("drop"), $("upload"), search);
