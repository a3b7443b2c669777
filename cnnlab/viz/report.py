"""One self-contained HTML file about a trained model: every picture is embedded (base64 PNG), so
it opens anywhere, offline, and can be mailed as one attachment.

Sections: architecture (shapes and the output-size formula per layer), training curves (when the
model file holds its history), confusion matrix, per-class accuracy, feature maps of a few
samples, the first layer's filters, misclassified examples, Grad-CAM; then the sequel's: what
every conv layer's filters look for, the patches that excite them, which pixels decide (four
ways), the embedding map, and "How it learned" (a training timeline, frame by frame under a
slider) when one was recorded.
"""

from __future__ import annotations

import base64
import datetime
import html
import io

import numpy as np

from cnnlab.data.pictures import class_names as recorded_class_names
from cnnlab.graph.summary import summary_text
from cnnlab.viz import plots

STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d2330;
       max-width: 1040px; margin: 0 auto; padding: 24px; background: #f6f7f9; }
h1 { margin: 0 0 4px; font-size: 26px; } h2 { margin: 0 0 10px; font-size: 19px; }
.sub { color: #5a6275; margin-bottom: 20px; }
section { background: white; border-radius: 10px; padding: 18px 22px; margin: 14px 0;
          box-shadow: 0 1px 3px rgba(0,0,0,.08); }
.stats { display: flex; gap: 14px; flex-wrap: wrap; }
.stat { background: #eef3ff; border-radius: 8px; padding: 10px 16px; }
.stat b { display: block; font-size: 22px; }
pre { background: #0f1524; color: #e6e9ef; padding: 14px; border-radius: 8px; overflow-x: auto;
      font-size: 12.5px; }
img { max-width: 100%; height: auto; display: block; margin: 6px 0; }
table { border-collapse: collapse; } td, th { padding: 3px 10px; text-align: left; }
.bar { background: #4f7cff; height: 10px; border-radius: 5px; }
.note { color: #5a6275; font-size: 13px; }
.frames img { display: none; } .frames img.shown { display: block; }
input[type=range] { width: 100%; }
"""

# the timeline's slider: shows the frame it points at (the report stays one offline file)
SLIDER_SCRIPT = """
for (const box of document.querySelectorAll('.frames')) {
  const frames = box.querySelectorAll('img'), slider = box.querySelector('input');
  const label = box.querySelector('.frame-label');
  const show = (k) => { frames.forEach((f, i) => f.classList.toggle('shown', i === k));
    label.textContent = `frame ${k + 1} of ${frames.length}`; };
  slider.addEventListener('input', () => show(Number(slider.value)));
  show(Number(slider.value));
}
"""


def _png(fig) -> str:
    """A matplotlib figure as an <img> with the PNG inline."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="" src="data:image/png;base64,{data}">'


def _section(title: str, body: str, note: str = "") -> str:
    note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return f"<section><h2>{html.escape(title)}</h2>{note_html}{body}</section>"


def _guarded(title: str, make, note: str = "") -> str:
    """A section, or the reason it cannot be drawn for this model (no conv layer ...)."""
    try:
        return _section(title, make(), note)
    except Exception as exc:                  # noqa: BLE001 - the rest of the report stands
        return _section(title, f"<p>{html.escape(str(exc))}</p>")


def _timeline_section(timeline) -> str:
    from cnnlab.viz.timeline import plot_frame
    frames = [_png(plot_frame(frame, timeline)).replace("<img", f'<img data-step="{frame.step}"')
              for frame in timeline.frames]
    body = (f'<div class="frames"><input type="range" min="0" max="{len(frames) - 1}" '
            f'value="{len(frames) - 1}" aria-label="timeline frame"><span class="frame-label '
            f'note"></span>{"".join(frames)}</div>')
    first, last = timeline.frames[0], timeline.frames[-1]
    return _section("How it learned", body,
                    f"{len(frames)} frames from step {first.step:,} ("
                    f"{'the initial weights' if first.step == 0 else 'where the run resumed'}) to "
                    f"step {last.step:,}: drag the slider to watch the first layer's filters, "
                    f"its maps of one fixed test image, and what {timeline.last_layer}'s "
                    f"filters look for, form as the network learns.")


def _inside_sections(model, x, y, names, visual_steps: int) -> list[str]:
    from cnnlab.viz import embedding, inside
    layers = inside.conv_layers(model)
    parts = [_guarded(f"What {layer}'s filters look for",
                      lambda layer=layer: _png(inside.plot_feature_visualisation(
                          model, layer, steps=visual_steps)),
                      "Each image is made by gradient ascent on the input until the filter's "
                      "activation is as high as it gets (regularised by jitter, small "
                      "rotations and scales, and 1/f-shaped steps). A layer whose cells see "
                      "less than half the image shows one cell's view, cropped to what it "
                      "sees.")
             for layer in layers]
    if layers:
        parts.append(_guarded(f"Which test images excite {layers[-1]}'s filters",
                              lambda: _png(inside.plot_top_patches(model, layers[-1], x))))
    parts.append(_guarded("Which pixels decide",
                          lambda: _png(inside.plot_attributions(model, x[0], names))))
    parts.append(_guarded(
        "How the classes arrange themselves",
        lambda: _png(inside.plot_embedding(embedding.embedding_map(model, x), y, names)),
        "Every test image at its penultimate-layer features, projected to 2-D by PCA."))
    return parts


def build_report(model, x, y, class_names=None, title: str | None = None,
                 samples: int = 4, timeline=None, visual_steps: int = 128, progress=None) -> str:
    """The report as an HTML string. ``x``: model-ready images; ``y``: integer labels;
    ``timeline``: a :class:`~cnnlab.viz.timeline.TrainingTimeline` for "How it learned";
    ``progress``: called with each part's name as it starts (the CLI prints them: a report
    takes seconds to a minute)."""
    say = progress or (lambda what: None)
    y = np.asarray(y).reshape(-1).astype(int)
    say(f"scoring {len(x):,} test images")
    names = class_names or recorded_class_names(model)
    matrix = plots.confusion_matrix(model, x, y, len(names))
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    per_class = np.diag(matrix) / np.maximum(matrix.sum(axis=1), 1)
    title = title or f"cnnlab report: {model.name}"
    parts = [f"<h1>{html.escape(title)}</h1>",
             f'<div class="sub">{datetime.datetime.now():%Y-%m-%d %H:%M} &middot; '
             f"{len(x):,} test images</div>",
             '<section class="stats">'
             f'<div class="stat">test accuracy<b>{accuracy:.2%}</b></div>'
             f'<div class="stat">parameters<b>{model.count_params():,}</b></div>'
             f'<div class="stat">layers<b>{len(model.layers)}</b></div>'
             f'<div class="stat">input<b>{"x".join(map(str, model.input_shape))}</b></div>'
             "</section>",
             _section("Architecture", f"<pre>{html.escape(summary_text(model))}</pre>",
                      "Each conv and pool layer's output size comes from the article's formula "
                      "O = floor((W - K + 2P) / S) + 1, with the layer's own numbers.")]
    history = getattr(model, "history", None)
    if history is not None and history.history.get("loss"):
        parts.append(_section("Training curves", _png(plots.plot_history(history))))
    rows = "".join(f"<tr><td>{html.escape(str(names[k]))}</td><td>{per_class[k]:.1%}</td>"
                   f'<td><div class="bar" style="width:{200 * per_class[k]:.0f}px"></div></td>'
                   f"<td>{matrix[k].sum()}</td></tr>" for k in range(len(names)))
    parts.append(_section("Confusion matrix and per-class accuracy",
                          _png(plots.plot_confusion_matrix(matrix, names)) +
                          f"<table><tr><th>class</th><th>accuracy</th><th></th><th>images</th>"
                          f"</tr>{rows}</table>"))
    say("feature maps, filters and misclassified examples")
    for i in range(min(2, len(x))):
        parts.append(_section(f"Feature maps, sample {i + 1} (true class {names[y[i]]})",
                              _png(plots.plot_feature_maps(model, x[i])),
                              "What every layer computes for this image; each map is scaled "
                              "to its own range."))
    try:
        parts.append(_section("First layer's filters", _png(plots.plot_filters(model))))
    except Exception as exc:                   # a model without Conv2D has no filters to show
        parts.append(_section("First layer's filters", f"<p>{html.escape(str(exc))}</p>"))
    parts.append(_section("Misclassified examples",
                          _png(plots.plot_misclassified(model, x, y, class_names=names))))
    say("Grad-CAM")
    try:
        parts.append(_section("Grad-CAM", _png(plots.plot_grad_cam(model, list(x[:samples * 2]),
                                                                   names)),
                              "Where the evidence for the predicted class lies (red: most)."))
    except Exception as exc:
        parts.append(_section("Grad-CAM", f"<p>{html.escape(str(exc))}</p>"))
    say(f"what each layer learns ({visual_steps} steps of gradient ascent per picture)")
    parts.extend(_inside_sections(model, x, y, names, visual_steps))
    if timeline is not None and timeline.frames:
        parts.append(_timeline_section(timeline))
    else:
        parts.append(_section("How it learned", "<p>No training timeline was recorded for this "
                              "model: train it with <code>cnnlab train --report</code> (or pass "
                              "a <code>TrainingTimeline</code> callback to <code>fit</code>) "
                              "and its frames appear here.</p>"))
    return ("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
            + "".join(parts) + f"<script>{SLIDER_SCRIPT}</script></body></html>")


def write_report(model, x, y, path, class_names=None, timeline=None, progress=None) -> str:
    """Build the report and write it atomically to ``path``."""
    from cnnlab.atomic import atomic_write
    document = build_report(model, x, y, class_names, timeline=timeline, progress=progress)
    with atomic_write(path, "w") as handle:
        handle.write(document)
    return str(path)
