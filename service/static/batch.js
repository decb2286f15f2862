// The batch page (ui/batches/{id}): a small client of the public API, as the viewer is.
// The batch: GET v1/batches/{id}, then its event stream (GET v1/batches/{id}/events,
// server-sent events whose data is the batch resource, read with fetch so the API key
// header goes along). Each item links to the viewer's single-job view (#job={item id});
// its thumbnail is its first overlay (item.links.overlays, at ?size=160), fetched once
// it has finished, a few at a time.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY = "pda.apiKey"; // the viewer's: one key per tab
const THUMB = 160;
const PARALLEL_THUMBS = 4;
const LIVE = new Set(["queued", "running"]);
const batchId = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
let last = null; // the last event id, to resume a broken stream
let stream = null;
const thumbs = new Map(); // item id -> object URL (or null while loading)
const waiting = [];
let loading = 0;

class Problem extends Error {
  constructor(doc) {
    super(doc.detail || doc.title || "request failed");
    this.doc = doc;
  }
}

async function api(path, options = {}) {
  const headers = new Headers(options.headers || {});
  const key = sessionStorage.getItem(KEY);
  if (key) headers.set("Authorization", `Bearer ${key}`);
  let res;
  try {
    res = await fetch(new URL(path, document.baseURI).href, { ...options, headers });
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
  if (res.status === 401) $("auth").open = true;
  throw new Problem(doc);
}

// server links are absolute paths ("/v1/..."); ours are relative to the viewer's root
const batchPath = (suffix = "") => `v1/batches/${encodeURIComponent(batchId)}${suffix}`;

function showError(err) {
  const doc = err instanceof Problem ? err.doc : { title: "Error", detail: String(err) };
  const box = $("error");
  const title = document.createElement("strong");
  title.textContent = doc.status ? `${doc.title} (${doc.status})` : doc.title || "Error";
  const detail = document.createElement("p");
  detail.textContent = doc.detail || "";
  box.replaceChildren(title, detail);
  box.hidden = false;
}

// ---------- the batch ----------------------------------------------------------------

function formatSeconds(s) {
  return s < 90 ? `${Math.round(s)} s` : `${Math.round(s / 60)} min`;
}

function update(batch) {
  const labels = { queued: "Queued…", running: "Running…", finished: "Finished",
    canceled: "Canceled" };
  $("status").textContent = labels[batch.status] || batch.status;
  const counts = Object.entries(batch.counts || {}).filter(([, n]) => n)
    .map(([status, n]) => `${n} ${status}`);
  $("counts").textContent = counts.length ? `(${counts.join(", ")})` : "";
  const { done = 0, total = 0 } = batch.progress || {};
  $("progress").max = Math.max(total, 1);
  $("progress").value = done;
  const eta = batch.eta_seconds == null || !LIVE.has(batch.status)
    ? "" : ` · about ${formatSeconds(batch.eta_seconds)} left`;
  $("progress-text").textContent = `${done} / ${total} forward passes${eta}`;
  $("cancel").hidden = !LIVE.has(batch.status);
  const results = batch.links && batch.links.results;
  $("results").hidden = !results;
  if (results) $("results").href = results;
  showItems(batch.items || []);
}

function showItems(items) {
  const list = $("items");
  for (const item of items) {
    let li = list.querySelector(`[data-index="${item.index}"]`);
    if (!li) {
      li = document.createElement("li");
      li.dataset.index = item.index;
      li.innerHTML = `<a><div class="thumb"></div><div class="name"></div>
        <div class="state"></div></a>`;
      list.append(li);
    }
    li.className = `item ${item.status}`;
    li.dataset.status = item.status;
    const link = li.querySelector("a");
    if (item.id) link.href = `./#job=${encodeURIComponent(item.id)}`; // the single-job view
    const name = item.filename || `item ${item.index}`;
    li.querySelector(".name").textContent = name;
    li.querySelector(".name").title = name;
    const state = item.status === "failed" && item.error
      ? `failed: ${item.error.title}` : item.status;
    li.querySelector(".state").textContent = state;
    if (item.error && item.error.detail) li.querySelector(".state").title = item.error.detail;
    const overlay = firstOverlay(item);
    if (item.status === "finished" && overlay && !thumbs.has(item.id)) {
      thumbs.set(item.id, null);
      waiting.push([item, overlay, li]);
      pump();
    }
  }
}

function firstOverlay(item) {
  const overlays = (item.links && item.links.overlays) || {};
  const first = Object.values(overlays)[0];
  if (!first) return null;
  const url = new URL(first, document.baseURI);
  url.searchParams.set("size", String(THUMB));
  return url.href;
}

// the thumbnails through fetch (a plain <img src> could not send the API key)
function pump() {
  while (loading < PARALLEL_THUMBS && waiting.length) {
    const [item, overlay, li] = waiting.shift();
    loading += 1;
    api(overlay).then((res) => res.blob()).then((blob) => {
      const url = URL.createObjectURL(blob);
      thumbs.set(item.id, url);
      const img = document.createElement("img");
      img.src = url;
      img.alt = `overlay of ${item.filename || `item ${item.index}`}`;
      li.querySelector(".thumb").replaceChildren(img);
    }).catch(() => {
      li.querySelector(".thumb").textContent = "no overlay";
    }).finally(() => {
      loading -= 1;
      pump();
    });
  }
}

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

// follow the batch's stream until it has ended; a broken stream resumes (Last-Event-ID)
async function listen() {
  stream = new AbortController();
  const headers = last == null ? {} : { "Last-Event-ID": last };
  let ended = false;
  try {
    const res = await api(batchPath("/events"), { headers, signal: stream.signal });
    if (res.status === 204) return; // resumed after the final event
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
        if (!event) continue;
        last = event.id;
        ended = !LIVE.has(event.data.status);
        update(event.data);
      }
    }
  } catch (err) {
    if (stream.signal.aborted) return;
    showError(err);
    if (err instanceof Problem && err.doc.status === 404) return;
  }
  if (!ended) setTimeout(listen, 2000);
}

async function start() {
  $("error").hidden = true;
  if (stream) stream.abort();
  try {
    const batch = await (await api(batchPath())).json();
    update(batch);
    if (LIVE.has(batch.status)) listen();
  } catch (err) {
    showError(err);
  }
}

async function cancel() {
  try {
    update(await (await api(batchPath(), { method: "DELETE" })).json());
  } catch (err) {
    showError(err);
  }
}

// plain links cannot send the Authorization header: with a key, fetch and save a blob
async function download(ev) {
  if (!sessionStorage.getItem(KEY)) return;
  ev.preventDefault();
  try {
    const blob = await (await api($("results").href)).blob();
    const url = URL.createObjectURL(blob);
    Object.assign(document.createElement("a"), { href: url, download: `${batchId}.zip` }).click();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (err) {
    showError(err);
  }
}

function init() {
  $("batch-id").textContent = batchId;
  $("apikey").value = sessionStorage.getItem(KEY) || "";
  $("savekey").addEventListener("click", () => {
    sessionStorage.setItem(KEY, $("apikey").value.trim());
    start();
  });
  $("cancel").addEventListener("click", cancel);
  $("results").addEventListener("click", download);
  start();
}

document.addEventListener("DOMContentLoaded", init);
