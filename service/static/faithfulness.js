// Faithfulness in the viewer: the scores' passes for the estimate, and the deletion and
// insertion curves drawn under each map (viewer.js calls scorePasses and drawCurves).
"use strict";

// the faithfulness protocol's step and random orders (pda/defaults.py FAITHFULNESS_*)
const SCORE_STEP = 0.04, SCORE_ORDERS = 3;

// the faithfulness scores' passes (pda/engine/faithfulness.py passes_needed): the image
// and the canvas, then the inner points of two curves per target and per random order
function scorePasses(size) {
  const layer = document.getElementById("layer").value.trim() || "output";
  const on = document.getElementById("faithfulness").value === "true";
  if (!on || !["output", "logits"].includes(layer)) return 0;
  const t = document.getElementById("target").value.trim().toLowerCase();
  const top = /^top(\d+)$/.exec(t);
  const T = top ? +top[1] : t.split(",").filter((v) => v.trim()).length;
  const N = size[0] * size[1], m = Math.max(1, Math.ceil(SCORE_STEP * N - 1e-9));
  const points = Math.ceil(N / m) + 1;
  return 2 + 2 * (points - 2) * (T + SCORE_ORDERS);
}

// the estimate shown beside the form: the sweep's passes and the scores'
function passesText(passes, extra) {
  return `${(passes + extra).toLocaleString("en")} forward passes` +
    (extra ? ` (${extra.toLocaleString("en")} of them for the faithfulness scores)` : "");
}

// Deletion and insertion curves (docs/faithfulness.md): p(class) against the fraction of
// pixels deleted or inserted in map order; dashed: the mean of random block orders
function drawCurves(f) {
  const NS = "http://www.w3.org/2000/svg", W = 336, H = 120, P = 4, half = W / 2;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("class", "curves");
  svg.setAttribute("viewBox", `0 0 ${W} ${H + 30}`);
  svg.setAttribute("role", "img");
  const b = f.baseline;
  svg.setAttribute("aria-label", `deletion AUC ${f.deletion_auc.toFixed(3)} (random ` +
    `${b.deletion_auc.toFixed(3)}), insertion AUC ${f.insertion_auc.toFixed(3)} (random ` +
    `${b.insertion_auc.toFixed(3)})`);
  const xs = f.curves.x;
  const panel = (x0, ys, dashed, colour) => {
    const pts = ys.map((y, i) => `${(x0 + P + xs[i] * (half - 2 * P)).toFixed(1)},` +
      `${(P + (1 - y) * (H - 2 * P)).toFixed(1)}`).join(" ");
    const line = document.createElementNS(NS, "polyline");
    line.setAttribute("points", pts);
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", colour);
    line.setAttribute("stroke-width", "1.5");
    if (dashed) line.setAttribute("stroke-dasharray", "3 3");
    svg.append(line);
  };
  const text = (x, y, t) => {
    const el = document.createElementNS(NS, "text");
    el.setAttribute("x", x);
    el.setAttribute("y", y);
    el.setAttribute("font-size", "11");
    el.textContent = t;
    svg.append(el);
  };
  for (const x0 of [0, half]) {
    const frame = document.createElementNS(NS, "rect");
    frame.setAttribute("x", x0 + P);
    frame.setAttribute("y", P);
    frame.setAttribute("width", half - 2 * P);
    frame.setAttribute("height", H - 2 * P);
    frame.setAttribute("fill", "none");
    frame.setAttribute("stroke", "#999");
    svg.append(frame);
  }
  panel(0, f.curves.baseline_deletion, true, "#888");
  panel(0, f.curves.deletion, false, "#b2182b");
  panel(half, f.curves.baseline_insertion, true, "#888");
  panel(half, f.curves.insertion, false, "#2166ac");
  text(P, H + 12, `deletion AUC ${f.deletion_auc.toFixed(3)} ↓`);
  text(P, H + 26, `random ${b.deletion_auc.toFixed(3)}`);
  text(half + P, H + 12, `insertion AUC ${f.insertion_auc.toFixed(3)} ↑`);
  text(half + P, H + 26, `random ${b.insertion_auc.toFixed(3)}`);
  const title = document.createElementNS(NS, "title");
  title.textContent = "p(class) as pixels are deleted (left) or inserted (right) in map " +
    "order; dashed: random 16x16 block orders";
  svg.prepend(title);
  return svg;
}
