// The explanation viewer: a small client of the public API (see /docs).
// Submit: POST v1/explanations; follow: the job's event stream (GET links.self + "/events",
// server-sent events read with fetch, so the API key header goes along: EventSource cannot
// send one); results: links.relevance (drawn here on <canvas>), links.input,
// links.overlays, links.relevance_npy.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "pda.apiKey";
const FIELDS = ["sampler", "fit", "window", "stride", "samples", "target", "layer", "seed",
  "padding", "fill", "faithfulness"];
let models = [];
let poll = null; // {id, timer, stream, last}: the job being followed, its stream, last event id

// ---------- API calls ----------------------------------------------------------------

class Problem extends Error {
  constructor(doc) {
    super(doc.detail || doc.title || "request failed");
    this.doc = doc;
  }
}

function apiUrl(path) {
  // server links are absolute paths ("/v1/..."); our own calls are relative to the page
  return new URL(path, document.baseURI).href;
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = sessionStorage.getItem(KEY);
  if (key) headers.set("Authorization", `Bearer ${key}`);
  let res;
  try {
    res = await fetch(apiUrl(path), { ...options, headers });
  } catch (err) {
    throw new Problem({ title: "Network error", detail: `cannot reach the API: ${err.message}` });
  }
  if (res.ok) return res;
  let doc;
  try {
    doc = await res.json();
  } catch {
    doc = { title: res.statusText, detail: `HTTP ${res.status}` };
  }
  doc.status = doc.status || res.status;
  if (res.status === 401) askForKey();
  throw new Problem(doc);
}

const getJson = async (path, options) => (await api(path, options)).json();

function askForKey() {
  const auth = $("auth");
  auth.open = true;
  $("apikey").focus();
}

// ---------- messages -----------------------------------------------------------------

function showError(err) {
  const box = $("error");
  const doc = err instanceof Problem ? err.doc : { title: "Error", detail: String(err) };
  box.replaceChildren();
  const title = document.createElement("strong");
  title.textContent = doc.status ? `${doc.title} (${doc.status})` : doc.title || "Error";
  const detail = document.createElement("p");
  detail.textContent = doc.detail || "";
  box.append(title, detail);
  if (doc.status === 401) {
    const hint = document.createElement("p");
    hint.textContent = "Enter an API key under “API key” and try again.";
    box.append(hint);
  }
  for (const e of doc.errors || []) {
    const input = $(e.field);
    if (input) input.setAttribute("aria-invalid", "true");
  }
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  document.querySelectorAll("[aria-invalid]").forEach((el) => el.removeAttribute("aria-invalid"));
}

// ---------- the form -----------------------------------------------------------------

async function loadModels() {
  models = await getJson("v1/models");
  const select = $("model");
  select.replaceChildren();
  for (const m of models) {
    const missing = m.available === false; // null: not known until a worker reports
    const opt = new Option(missing ? `${m.name} (weights missing)` : m.name, m.name);
    opt.disabled = missing;
    opt.title = m.description;
    opt.selected = m.default;
    select.append(opt);
  }
  updatePasses();
}

function setValues(values) {
  for (const [name, value] of Object.entries(values)) if ($(name)) $(name).value = value;
  updatePasses();
}

function defaults() {
  const values = {};
  for (const name of FIELDS) {
    const el = $(name);
    values[name] = el.dataset.default ?? el.defaultValue;
  }
  return values;
}

// forward passes, as the server counts them (pda/params.py plan): windows sit at
// 0, s, 2s, ... <= H - k on each axis; S samples each (1 for constant); +1 for the image
function updatePasses() {
  const model = models.find((m) => m.name === $("model").value) || models.find((m) => m.default);
  if (model) $("layers-link").href = `v1/models/${encodeURIComponent(model.name)}`;
  const size = (model && model.input_size) || null;
  const k = +$("window").value, s = +$("stride").value, S = +$("samples").value;
  const out = $("passes");
  if (!size || !(k >= 1 && s >= 1 && S >= 1) || k > Math.min(...size)) {
    out.textContent = "";
    return;
  }
  const n = (Math.floor((size[0] - k) / s) + 1) * (Math.floor((size[1] - k) / s) + 1);
  const passes = n * ($("sampler").value === "constant" ? 1 : S) + 1;
  out.textContent = passesText(passes, scorePasses(size));
}

function chooseFile(file) {
  if (!file) return;
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
}

async function submit(event) {
  event.preventDefault();
  clearError();
  const file = $("image").files[0];
  if (!file) return showError(new Problem({ title: "No image", detail: "choose an image" }));
  const body = new FormData();
  body.append("image", file, file.name);
  if ($("model").value) body.append("model", $("model").value);
  for (const name of FIELDS) if ($(name).value.trim()) body.append(name, $(name).value.trim());
  $("submit").disabled = true;
  try {
    const job = await getJson("v1/explanations", { method: "POST", body });
    follow(job);
  } catch (err) {
    showError(err);
  } finally {
    $("submit").disabled = false;
  }
}

// ---------- following a job ----------------------------------------------------------

function follow(job) {
  stopFollowing();
  poll = { id: job.id, timer: null, stream: null, last: null };
  history.replaceState(null, "", `#job=${job.id}`);
  $("job-id").textContent = job.id;
  $("job").hidden = false;
  $("result").hidden = true;
  $("input").parentElement.hidden = true;
  $("relevance").hidden = true;
  for (const id of ["maps", "prediction", "downloads"]) $(id).replaceChildren();
  update(job);
  if (isLive(job)) listen(job.id);
}

function stopFollowing() {
  if (!poll) return;
  clearTimeout(poll.timer);
  if (poll.stream) poll.stream.abort();
}

const isLive = (job) => job.status === "queued" || job.status === "running";

// one event of a text/event-stream: {id, data}, or null for a comment or a retry field
function parseEvent(block) {
  let id = null;
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("id:")) id = line.slice(3).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  return data.length ? { id, data: JSON.parse(data.join("\n")) } : null;
}

// follow the job's stream to its final event; a stream that breaks is resumed where it
// was (Last-Event-ID), as EventSource would
async function listen(id) {
  if (!poll || poll.id !== id) return;
  const stream = new AbortController();
  const headers = poll.last == null ? {} : { "Last-Event-ID": poll.last };
  poll.stream = stream;
  let ended = false;
  try {
    const res = await api(`v1/explanations/${encodeURIComponent(id)}/events`,
      { headers, signal: stream.signal });
    if (res.status === 204) return; // resumed after the final event: nothing newer
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = parseEvent(buffer.slice(0, cut));
        buffer = buffer.slice(cut + 2);
        if (!event || !poll || poll.id !== id) continue;
        poll.last = event.id;
        ended = !isLive(event.data);
        update(event.data);
      }
    }
  } catch (err) {
    if (stream.signal.aborted) return; // canceled here, or another job is followed now
    showError(err);
    if (err instanceof Problem && err.doc.status === 404) return;
  }
  if (!ended && poll && poll.id === id) poll.timer = setTimeout(() => listen(id), 2000);
}

function update(job) {
  const { done, total } = job.progress;
  const progress = $("progress");
  progress.max = Math.max(total, 1);
  progress.value = done;
  const eta = job.eta_seconds == null ? "" : ` · about ${formatSeconds(job.eta_seconds)} left`;
  $("progress-text").textContent = `${done} / ${total} forward passes${eta}`;
  const labels = { queued: "Queued…", running: "Running…", finished: "Finished",
    failed: "Failed", canceled: "Canceled" };
  $("status").textContent = labels[job.status] || job.status;
  const live = isLive(job);
  $("cancel").hidden = !live;
  if (job.prediction && !$("prediction").childElementCount) showPrediction(job.prediction);
  if (live) {
    clearError(); // a stream that broke and resumed
  } else if (job.status === "finished") {
    showResult(job).catch(showError);
  } else if (job.status === "failed" && job.error) {
    showError(new Problem(job.error));
  }
}

function formatSeconds(s) {
  return s < 90 ? `${Math.round(s)} s` : `${Math.round(s / 60)} min`;
}

async function cancel() {
  if (!poll) return;
  const id = poll.id;
  stopFollowing();
  try {
    const job = await getJson(`v1/explanations/${encodeURIComponent(id)}`, { method: "DELETE" });
    update(job);
  } catch (err) {
    showError(err);
  }
}

// ---------- results ------------------------------------------------------------------

function showPrediction(prediction) {
  const list = $("prediction");
  list.replaceChildren();
  for (const p of prediction) {
    const li = document.createElement("li");
    const pct = (100 * p.probability).toFixed(1);
    li.innerHTML = `<span class="label"></span> <span class="hint">#${p.class_index}</span>
      <span class="prob">${pct}%</span><span class="bar"></span>`;
    li.querySelector(".label").textContent = p.label;
    li.querySelector(".bar").style.width = `${pct}%`; // not inline: the page's CSP forbids it
    list.append(li);
  }
  $("result").hidden = false;
}

async function loadImage(path) {
  const blob = await (await api(path)).blob();
  return { url: URL.createObjectURL(blob), bitmap: await createImageBitmap(blob) };
}

async function showResult(job) {
  const [doc, input] = await Promise.all([getJson(job.links.relevance), loadImage(job.links.input)]);
  if (!poll || poll.id !== job.id) return;
  showPrediction(doc.prediction);
  $("input").src = input.url;
  $("input").parentElement.hidden = false;
  drawMaps(doc, input.bitmap);
  const warning = doc.coverage && doc.coverage.warning;
  $("coverage-warning").textContent = warning ? `Warning: ${warning}` : "";
  $("coverage-warning").hidden = !warning;
  showDownloads(job, doc);
  $("relevance").hidden = false;
}

// matplotlib "seismic", as in pda/render.py: 0 dark blue .. 0.5 white .. 1 dark red
const STOPS = [[0, 0, 0.3], [0, 0, 1], [1, 1, 1], [1, 0, 0], [0.5, 0, 0]];

function seismic(t) {
  const x = Math.min(Math.max(t, 0), 1) * 4;
  const i = Math.min(Math.floor(x), 3), f = x - i;
  return STOPS[i].map((c, j) => c + (STOPS[i + 1][j] - c) * f);
}

function greyscale(bitmap, W, H) {
  const c = new OffscreenCanvas(W, H);
  const ctx = c.getContext("2d");
  ctx.drawImage(bitmap, 0, 0, W, H);
  const px = ctx.getImageData(0, 0, W, H).data;
  const grey = new Float32Array(W * H);
  for (let i = 0; i < W * H; i++) {
    grey[i] = (0.299 * px[4 * i] + 0.587 * px[4 * i + 1] + 0.114 * px[4 * i + 2]) / 255;
  }
  return grey;
}

function drawMaps(doc, bitmap) {
  const maps = $("maps");
  maps.replaceChildren();
  const expl = doc.explanations;
  if (!expl.length) return;
  const H = expl[0].relevance.length, W = expl[0].relevance[0].length;
  const grey = greyscale(bitmap, W, H);
  // one symmetric scale [-m, m] for every target, so one colour bar reads them all
  let m = 0;
  for (const e of expl) {
    const peak = () => e.relevance.flat().reduce((a, v) => Math.max(a, Math.abs(v)), 0);
    m = Math.max(m, e.max_abs ?? peak());
  }
  if (!(m > 0)) m = 1;
  const unit = expl[0].unit;

  for (const e of expl) {
    const fig = document.createElement("figure");
    const canvas = document.createElement("canvas");
    canvas.width = W;
    canvas.height = H;
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", `relevance map for ${e.label} (${e.target})`);
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(W, H);
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) {
        const r = e.relevance[y][x], i = y * W + x;
        const [cr, cg, cb] = seismic(r / (2 * m) + 0.5);
        const a = 0.35 + 0.55 * Math.min(Math.abs(r) / m, 1);
        img.data[4 * i] = 255 * (grey[i] * (1 - a) + cr * a);
        img.data[4 * i + 1] = 255 * (grey[i] * (1 - a) + cg * a);
        img.data[4 * i + 2] = 255 * (grey[i] * (1 - a) + cb * a);
        img.data[4 * i + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
    canvas.addEventListener("mousemove", (ev) => hover(ev, e, canvas));
    canvas.addEventListener("mouseleave", () => { $("hover").textContent = "\u00a0"; });
    const cap = document.createElement("figcaption");
    cap.textContent = `${e.label} (${e.target})`;
    fig.append(cap, canvas);
    if (e.faithfulness) fig.append(drawCurves(e.faithfulness));
    maps.append(fig);
  }
  drawBar(m, unit);
}

function hover(ev, e, canvas) {
  const x = Math.floor((ev.offsetX / canvas.clientWidth) * canvas.width);
  const y = Math.floor((ev.offsetY / canvas.clientHeight) * canvas.height);
  if (x < 0 || y < 0 || x >= canvas.width || y >= canvas.height) return;
  const v = e.relevance[y][x];
  $("hover").textContent = `${e.label} at (x ${x}, y ${y}): ${formatValue(v)} ${e.unit}`;
}

function formatValue(v) {
  return v === 0 ? "0" : (v > 0 ? "+" : "") + v.toPrecision(3);
}

function drawBar(m, unit) {
  const bar = $("bar");
  const ctx = bar.getContext("2d");
  for (let x = 0; x < bar.width; x++) {
    const [r, g, b] = seismic(x / (bar.width - 1));
    ctx.fillStyle = `rgb(${255 * r}, ${255 * g}, ${255 * b})`;
    ctx.fillRect(x, 0, 1, bar.height);
  }
  const ticks = $("ticks");
  ticks.replaceChildren();
  for (const v of [-m, -m / 2, 0, m / 2, m]) {
    const t = document.createElement("span");
    t.textContent = formatValue(v);
    ticks.append(t);
  }
  $("unit").textContent = unit === "bits"
    ? "bits (weight of evidence, log2 odds)" : "activation (change in the layer's output)";
}

function showDownloads(job, doc) {
  const box = $("downloads");
  box.replaceChildren("Download: ");
  const link = (text, href, filename) => {
    const a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    a.download = filename;
    a.addEventListener("click", (ev) => download(ev, href, filename));
    box.append(a, " ");
  };
  link("relevance JSON", job.links.relevance, `${job.id}.json`);
  link("relevance .npy", job.links.relevance_npy, `${job.id}.npy`);
  link("input PNG", job.links.input, `${job.id}-input.png`);
  for (const e of doc.explanations) {
    const href = job.links.overlays[String(e.target)];
    if (href) link(`overlay PNG: ${e.label}`, href, `${job.id}-overlay-${e.target}.png`);
  }
}

// plain links cannot send the Authorization header: with a key, fetch and save a blob
async function download(ev, href, filename) {
  if (!sessionStorage.getItem(KEY)) return;
  ev.preventDefault();
  try {
    const url = URL.createObjectURL(await (await api(href)).blob());
    const a = Object.assign(document.createElement("a"), { href: url, download: filename });
    a.click();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (err) {
    showError(err);
  }
}

// ---------- wiring -------------------------------------------------------------------

function init() {
  $("form").addEventListener("submit", submit);
  $("form").addEventListener("input", updatePasses);
  $("image").addEventListener("change", () => chooseFile($("image").files[0]));
  for (const preset of ["paper", "fast"]) {
    $(preset).addEventListener("click", () => setValues(JSON.parse($(preset).dataset.preset)));
  }
  $("defaults").addEventListener("click", () => setValues(defaults()));
  $("cancel").addEventListener("click", cancel);

  const drop = $("drop");
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    if (ev.dataTransfer.files.length) {
      $("image").files = ev.dataTransfer.files;
      chooseFile(ev.dataTransfer.files[0]);
    }
  });

  $("apikey").value = sessionStorage.getItem(KEY) || "";
  $("savekey").addEventListener("click", () => {
    sessionStorage.setItem(KEY, $("apikey").value.trim());
    clearError();
    start();
  });
  $("forgetkey").addEventListener("click", () => {
    sessionStorage.removeItem(KEY);
    $("apikey").value = "";
  });
  start();
}

async function start() {
  try {
    await loadModels();
  } catch (err) {
    return showError(err);
  }
  const match = location.hash.match(/^#job=([\w-]+)$/);
  if (match && (!poll || poll.id !== match[1])) {
    poll = { id: match[1], timer: null, stream: null, last: null };
    $("job-id").textContent = match[1];
    $("job").hidden = false;
    listen(match[1]); // its first event is the job as it is now
  }
}

document.addEventListener("DOMContentLoaded", init);
