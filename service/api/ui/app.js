// tileseg's page: lists the models, submits jobs (upload with progress, or a server path) with the options
// of the API's own form schema, follows them live (server-sent events, polling as the fallback), and shows
// a finished job's mask over its input (Leaflet for georeferenced inputs, OpenSeadragon for pixel space), and an
// instance job's objects as outlines over it (from the GeoJSON of its vectors).
// Plain JavaScript, no build step; every call goes to the same server, relative to this page.
"use strict";

const KEY_STORE = "tileseg.apiKey";
const BUILT_IN_FIELDS = new Set(["file", "source", "model"]);
// the options most people need sit beside the model and the image; the rest behind the "Advanced" fold
const MAIN_OPTIONS = ["roi", "vectors", "instances"];
// an SVG or a Leaflet layer of more outlines than this slows the page down: past it, the downloads have them
const MAX_OUTLINES = 20000;
const SVG_NS = "http://www.w3.org/2000/svg";
const UNIT_SYMBOLS = { um: "µm", m: "m" };
const FINAL = new Set(["succeeded", "failed", "canceled", "expired"]);
const $ = (id) => document.getElementById(id);
const state = { models: [], viewer: null, follow: null, config: { basemap: null } };

// ---- the API: the key, errors as the API words them ----------------------------------------------------

function apiKey() { return sessionStorage.getItem(KEY_STORE); }
function authHeaders() { const key = apiKey(); return key ? { "X-API-Key": key } : {}; }

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function errorOf(status, text) {
  try {
    const body = JSON.parse(text);
    if (body && body.error) return new ApiError(status, body.error.code, body.error.message);
  } catch (_) { /* not the API's JSON: say what came back */ }
  return new ApiError(status, "http_" + status, text || "HTTP " + status);
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (!response.ok) throw await errorOf(response.status, await response.text());
  return response.status === 204 ? null : response.json();
}

function showError(err) {
  const box = $("error");
  if (!err) { box.hidden = true; box.textContent = ""; return; }
  if (err.status === 401) askForKey(err.message);
  box.textContent = err.status ? `${err.status} ${err.code}: ${err.message}` : String(err.message || err);
  box.hidden = false;
}

function askForKey(reason) {
  $("key-section").hidden = false;
  $("key-reason").textContent = reason;
  $("api-key").focus();
}

// ---- models ----------------------------------------------------------------------------------------------

function swatch(colour) {
  const s = document.createElement("span");
  s.className = "swatch";
  s.style.background = colour;
  s.setAttribute("aria-hidden", "true");
  return s;
}

function modelCard(card) {
  const div = document.createElement("article");
  div.className = "card";
  const h = document.createElement("h3");
  h.textContent = card.name;
  const dl = document.createElement("dl");
  const metrics = card.metrics || {};
  const rows = [
    ["architecture", card.arch],
    ["bands", String(card.bands)],
    ["pixel size", pixelSize(card.spec && card.spec.input && card.spec.input.pixel_size)],
    ["metrics", ["miou", "pixel_error"].filter((k) => k in metrics).map((k) => `${k} ${metrics[k]}`).join(", ") || "none"],
  ];
  for (const [term, value] of rows) {
    const dt = document.createElement("dt"); dt.textContent = term;
    const dd = document.createElement("dd"); dd.textContent = value;
    dl.append(dt, dd);
  }
  const dt = document.createElement("dt"); dt.textContent = "classes";
  const dd = document.createElement("dd"); dd.className = "chips";
  for (const c of card.classes || []) {
    const chip = document.createElement("span");
    chip.append(swatch(c.color), `${c.index} ${c.name}`);
    dd.append(chip);
  }
  dl.append(dt, dd);
  div.append(h, dl);
  return div;
}

// A card's pixel size: {value, unit, tolerance} (older cards: a plain number in metres, or null).
function pixelSize(size) {
  if (size == null) return "any";
  if (typeof size === "number") return `${size} m`;
  const tolerance = size.tolerance ? ` (± ${Math.round(size.tolerance * 100)} %)` : "";
  return `${size.value} ${UNIT_SYMBOLS[size.unit] || size.unit}${tolerance}`;
}

async function loadModels() {
  const body = await api("models");
  state.models = body.models;
  $("models").replaceChildren(...state.models.map(modelCard));
  const select = $("model");
  const chosen = select.value;
  select.replaceChildren(...state.models.map((m) => new Option(`${m.name} (${m.arch}, ${m.bands} band${m.bands > 1 ? "s" : ""})`, m.name)));
  if (chosen) select.value = chosen;
}

// ---- the options, from the form's schema in /openapi.json --------------------------------------------------

function optionField(name, prop) {
  const wrap = document.createElement("div");
  const id = "opt-" + name;
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = name.replace(/_/g, " ");
  let input;
  if (prop.type === "boolean") {
    wrap.className = "field check";
    input = document.createElement("input");
    input.type = "checkbox";
  } else if (prop.enum) {
    wrap.className = "field";
    input = document.createElement("select");
    input.append(new Option("(default)", ""), ...prop.enum.map((v) => new Option(v, v)));
  } else {
    wrap.className = "field";
    input = document.createElement("input");
    if (prop.type === "integer" || prop.type === "number") {
      input.type = "number";
      input.step = prop.type === "integer" ? "1" : "any";
      for (const [key, attr] of [["minimum", "min"], ["maximum", "max"]]) if (key in prop) input.setAttribute(attr, prop[key]);
    } else {
      input.type = "text";
      if (prop.pattern) input.pattern = prop.pattern;
    }
    input.placeholder = "default";
  }
  input.id = id;
  input.name = name;
  input.dataset.kind = prop.type || "string";
  if (prop.description) {
    const hint = document.createElement("span");
    hint.className = "hint";
    hint.id = id + "-hint";
    hint.textContent = prop.description;
    input.setAttribute("aria-describedby", hint.id);
    wrap.append(...(prop.type === "boolean" ? [input, label, hint] : [label, input, hint]));
  } else {
    wrap.append(...(prop.type === "boolean" ? [input, label] : [label, input]));
  }
  return wrap;
}

async function loadOptions() {
  const schema = await api("openapi.json");
  const form = schema.paths["/segment"].post.requestBody.content["multipart/form-data"].schema;
  const fields = Object.entries(form.properties).filter(([name]) => !BUILT_IN_FIELDS.has(name));
  const main = MAIN_OPTIONS.filter((name) => name in form.properties);
  $("main-options").replaceChildren(...main.map((name) => optionField(name, form.properties[name])));
  const advanced = fields.filter(([name]) => !main.includes(name)).map(([n, p]) => optionField(n, p));
  $("options").replaceChildren($("options").querySelector("legend"), ...advanced);
}

function formData() {
  const data = new FormData();
  data.append("model", $("model").value);
  for (const input of document.querySelectorAll("#main-options input, #main-options select, #options input, #options select")) {
    if (input.type === "checkbox") { if (input.checked) data.append(input.name, "true"); }
    else if (input.value !== "") data.append(input.name, input.value);
  }
  // the page draws an instance job's objects from the GeoJSON of its vectors: it asks for them with the objects
  if (data.get("instances") === "true" && !data.has("vectors")) data.append("vectors", "true");
  const source = $("source").value.trim();
  if (source) data.append("source", source);
  if ($("file").files.length) data.append("file", $("file").files[0]);
  return data;
}

// ---- submitting, with upload progress --------------------------------------------------------------------

function setUpload(percent) {
  $("upload-progress").value = percent;
  $("upload-text").textContent = `${Math.round(percent)} %`;
}

function upload(data) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "segment");
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) setUpload((100 * e.loaded) / e.total); };
    xhr.onload = async () => {
      if (xhr.status === 202) { setUpload(100); resolve(JSON.parse(xhr.responseText)); }
      else reject(await errorOf(xhr.status, xhr.responseText));
    };
    xhr.onerror = () => reject(new Error("the upload failed: the server could not be reached"));
    xhr.send(data);
  });
}

async function submit(event) {
  event.preventDefault();
  showError(null);
  $("submit").disabled = true;
  setUpload(0);
  try {
    const job = await upload(formData());
    showJob(job);
    follow(job.id);
    refreshJobs();
  } catch (err) {
    showError(err);
  } finally {
    $("submit").disabled = false;
  }
}

// ---- following a job: server-sent events, polling as the fallback ---------------------------------------

function showJob(job) {
  const percent = job.progress.percent;
  $("job-progress").value = percent;
  const error = job.error ? ` — ${job.error.code}: ${job.error.message}` : "";
  $("job-text").textContent = `${job.input.name}: ${job.status}, ${percent} %${error}`;
  updateJobRow(job);
}

function follow(jobId) {
  if (state.follow) state.follow.stop();
  const handle = { stopped: false, stop() { this.stopped = true; if (this.source) this.source.close(); if (this.abort) this.abort.abort(); } };
  state.follow = handle;
  const onJob = (job) => {
    if (handle.stopped) return;
    showJob(job);
    if (FINAL.has(job.status)) {
      handle.stop();
      refreshJobs();
      if (job.status === "succeeded") openViewer(job);
    }
  };
  const fallback = () => { if (!handle.stopped) poll(jobId, handle, onJob); };
  if (apiKey()) streamWithFetch(jobId, handle, onJob, fallback);  // EventSource cannot send the key header
  else if (window.EventSource) streamWithEventSource(jobId, handle, onJob, fallback);
  else fallback();
}

function streamWithEventSource(jobId, handle, onJob, fallback) {
  const source = new EventSource(`jobs/${jobId}/events`);
  handle.source = source;
  let got = false;
  source.addEventListener("job", (e) => { got = true; onJob(JSON.parse(e.data)); });
  source.addEventListener("end", () => source.close());
  source.onerror = () => { if (!got) { source.close(); fallback(); } };  // later errors: it reconnects itself
}

async function streamWithFetch(jobId, handle, onJob, fallback) {
  handle.abort = new AbortController();
  try {
    while (!handle.stopped) {
      const response = await fetch(`jobs/${jobId}/events`, { headers: authHeaders(), signal: handle.abort.signal });
      if (!response.ok || !response.body) throw await errorOf(response.status, await response.text());
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const kind = (block.match(/^event: (.*)$/m) || [])[1];
          const data = block.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (kind === "job") onJob(JSON.parse(data));
        }
      }
    }
  } catch (err) {
    if (handle.stopped) return;
    if (err.status === 401 || err.status === 404) { showError(err); return; }
    fallback();
  }
}

async function poll(jobId, handle, onJob) {
  while (!handle.stopped) {
    try { onJob(await api(`jobs/${jobId}`)); }
    catch (err) { showError(err); return; }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

// ---- the job list ----------------------------------------------------------------------------------------

function jobRow(job) {
  const tr = document.createElement("tr");
  tr.dataset.job = job.id;
  const cells = [job.input.name, job.model, job.status, `${job.progress.percent} %`,
    job.timings.seconds == null ? "" : job.timings.seconds.toFixed(1), job.error ? `${job.error.code}: ${job.error.message}` : ""];
  cells.forEach((text, i) => {
    const td = document.createElement("td");
    td.textContent = text;
    if (i === 2) td.className = "status-" + job.status;
    if (i === 5) td.className = "error";
    tr.append(td);
  });
  const td = document.createElement("td");
  if (job.status === "succeeded") {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "View";
    button.setAttribute("aria-label", `View the mask of ${job.input.name}`);
    button.addEventListener("click", () => openViewer(job));
    td.append(button);
  }
  tr.append(td);
  return tr;
}

function updateJobRow(job) {
  const body = $("jobs").tBodies[0];
  const old = body.querySelector(`tr[data-job="${job.id}"]`);
  const row = jobRow(job);
  if (old) old.replaceWith(row); else body.prepend(row);
}

async function refreshJobs() {
  try {
    const body = await api("jobs?limit=50");
    $("jobs").tBodies[0].replaceChildren(...body.jobs.map(jobRow));
  } catch (err) { showError(err); }
}

// ---- the viewer ------------------------------------------------------------------------------------------

async function openViewer(job) {
  let tiles;
  try { tiles = await api(`jobs/${job.id}/tiles`); } catch (err) { showError(err); return; }
  $("viewer-section").hidden = false;
  if (state.viewer) state.viewer.destroy();
  const hidden = new Set();
  const opacity = () => Number($("opacity").value) / 100;
  const maskUrl = () => tiles.urls.mask + (hidden.size ? `?hide=${[...hidden].sort((a, b) => a - b).join(",")}` : "");
  state.viewer = tiles.kind === "xyz" ? leafletViewer(tiles, maskUrl, opacity) : deepZoomViewer(tiles, maskUrl, opacity);
  state.viewer.job = job.id;
  $("opacity").oninput = () => state.viewer.setOpacity(opacity());
  buildLegend(tiles.classes, hidden);
  buildDownloads(job);
  $("viewer-section").scrollIntoView({ block: "start" });
  showOutlines(job, state.viewer);
}

// ---- an instance job's objects, outlined over the image ------------------------------------------------

async function showOutlines(job, viewer) {
  if (!job.options.instances || !job.links.vectors) return;
  let collection;
  try {
    const response = await fetch(`${job.links.vectors}?format=geojson`, { headers: authHeaders() });
    if (!response.ok) throw await errorOf(response.status, await response.text());
    collection = await response.json();
  } catch (err) { showError(err); return; }
  if (state.viewer !== viewer) return;  // another job was opened meanwhile
  const count = collection.features.length;
  const crs = collection.crs && collection.crs.properties && collection.crs.properties.name;
  // Leaflet draws lon/lat; a layer in another CRS would need a projection library the page does not carry
  const drawable = viewer.kind === "deepzoom" || !crs || /4326|CRS84/.test(crs);
  const label = document.createElement("label");
  label.className = "outlines-toggle";
  if (count > MAX_OUTLINES || !drawable) {
    label.textContent = `${count} objects (not outlined here: ${count > MAX_OUTLINES ? "too many" : crs}; see the downloads)`;
  } else {
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = true;
    box.id = "outlines";
    box.addEventListener("change", () => viewer.showOutlines(box.checked));
    label.append(box, `${count} object outlines`);
    viewer.setOutlines(collection);
  }
  $("legend").append(label);
}

// Each polygon ring of a GeoJSON geometry (Polygon or MultiPolygon), as lists of [x, y].
function ringsOf(geometry) {
  if (!geometry) return [];
  if (geometry.type === "Polygon") return geometry.coordinates;
  if (geometry.type === "MultiPolygon") return geometry.coordinates.flat();
  return [];
}

// An SVG of the outlines in pixel space (a QuPath GeoJSON: x the column, y the row), the image's size.
function outlineSvg(collection, width, height) {
  const svg = document.createElementNS(SVG_NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("class", "outlines");
  svg.setAttribute("aria-hidden", "true");
  const parts = [];
  for (const feature of collection.features) {
    for (const ring of ringsOf(feature.geometry)) parts.push("M" + ring.map(([x, y]) => `${x} ${y}`).join("L") + "Z");
  }
  const path = document.createElementNS(SVG_NS, "path");
  path.setAttribute("d", parts.join(""));
  path.setAttribute("vector-effect", "non-scaling-stroke");
  svg.append(path);
  return svg;
}

function buildLegend(classes, hidden) {
  const boxes = classes.map((c) => {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = true;
    box.value = c.index;
    box.addEventListener("change", () => {
      if (box.checked) hidden.delete(c.index); else hidden.add(c.index);
      state.viewer.redrawMask();
    });
    label.append(box, swatch(c.color), `${c.index} ${c.name}`);
    return label;
  });
  $("legend").replaceChildren($("legend").querySelector("legend"), ...boxes);
}

function buildDownloads(job) {
  const items = Object.entries(job.links)
    .filter(([name, url]) => url && !["self", "tiles"].includes(name))
    .map(([name, url]) => {
      const li = document.createElement("li");
      const a = document.createElement("a");
      a.href = url;
      a.textContent = name;
      a.addEventListener("click", (e) => { if (apiKey()) { e.preventDefault(); download(url, name); } });
      li.append(a);
      return li;
    });
  $("downloads").replaceChildren(...items);
}

async function download(url, name) {
  // a link cannot carry the key header: fetch with it, and save what came back
  try {
    const response = await fetch(url, { headers: authHeaders() });
    if (!response.ok) throw await errorOf(response.status, await response.text());
    const a = document.createElement("a");
    a.href = URL.createObjectURL(await response.blob());
    a.download = (response.headers.get("Content-Disposition") || "").match(/filename="?([^";]+)/)?.[1] || name;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  } catch (err) { showError(err); }
}

function fillUrl(template, z, x, y) {
  return template.replace("{z}", z).replace("{x}", x).replace("{y}", y);
}

// Leaflet's <img> tiles cannot send a header: with a key, each tile is fetched with it and shown from a blob.
const KeyedTileLayer = L.TileLayer.extend({
  createTile(coords, done) {
    const img = document.createElement("img");
    img.alt = "";
    if (!apiKey()) {
      img.onload = () => done(null, img);
      img.onerror = (e) => done(e, img);
      img.src = this.getTileUrl(coords);
      return img;
    }
    fetch(this.getTileUrl(coords), { headers: authHeaders() })
      .then((r) => (r.ok ? r.blob() : Promise.reject(new Error("tile " + r.status))))
      .then((blob) => {
        img.onload = () => { URL.revokeObjectURL(img.src); done(null, img); };
        img.src = URL.createObjectURL(blob);
      })
      .catch((e) => done(e, img));
    return img;
  },
});

function leafletViewer(tiles, maskUrl, opacity) {
  const element = document.createElement("div");
  element.style.height = "100%";
  $("viewer").replaceChildren(element);
  const [west, south, east, north] = tiles.bounds;
  const bounds = L.latLngBounds([south, west], [north, east]);
  const map = L.map(element, { keyboard: true, maxZoom: tiles.max_zoom + 3, minZoom: Math.max(0, tiles.min_zoom - 2) });
  const options = { bounds, maxNativeZoom: tiles.max_zoom, maxZoom: tiles.max_zoom + 3, tileSize: tiles.tile_size, noWrap: true };
  // the server's base map (TILESEG_BASEMAP_URL) goes under everything; another site's tiles need no key
  if (state.config.basemap) L.tileLayer(state.config.basemap, { maxZoom: tiles.max_zoom + 3, className: "basemap" }).addTo(map);
  if (tiles.urls.input) new KeyedTileLayer(fillUrl(tiles.urls.input, "{z}", "{x}", "{y}"), options).addTo(map);
  const mask = new KeyedTileLayer(maskUrl(), { ...options, opacity: opacity() }).addTo(map);
  map.fitBounds(bounds);
  let outlines = null;
  return {
    kind: "xyz",
    setOpacity: (v) => mask.setOpacity(v),
    redrawMask: () => mask.setUrl(maskUrl()),
    setOutlines: (collection) => {
      outlines = L.geoJSON(collection, { interactive: false, style: { color: "#ffe14d", weight: 1.5, fill: false } });
      outlines.addTo(map);
    },
    showOutlines: (on) => { if (outlines) { if (on) outlines.addTo(map); else outlines.remove(); } },
    destroy: () => map.remove(),
  };
}

function deepZoomViewer(tiles, maskUrl, opacity) {
  $("viewer").replaceChildren();
  const source = (urlOf) => ({
    width: tiles.width, height: tiles.height, tileSize: tiles.tile_size, tileOverlap: 0,
    minLevel: 0, maxLevel: tiles.max_zoom,
    getTileUrl: (level, x, y) => fillUrl(urlOf(), level, x, y),
  });
  const osd = OpenSeadragon({
    element: $("viewer"),
    prefixUrl: "ui/vendor/openseadragon/images/",
    drawer: "canvas",
    loadTilesWithAjax: true,
    ajaxHeaders: authHeaders(),
    showNavigator: false,
    maxZoomPixelRatio: 8,
    tileSources: tiles.urls.input ? [source(() => tiles.urls.input)] : [],
  });
  let mask = null;
  const addMask = () => {
    const old = mask;
    osd.addTiledImage({
      tileSource: source(maskUrl),
      opacity: opacity(),
      // the slider may have moved while the new layer was being added: it takes the slider's value now
      success: (e) => { mask = e.item; mask.setOpacity(opacity()); if (old) osd.world.removeItem(old); },
    });
  };
  if (tiles.urls.input) osd.addOnceHandler("open", addMask); else addMask();
  let outlines = null;
  return {
    kind: "deepzoom",
    osd,
    setOpacity: (v) => { if (mask) mask.setOpacity(v); },
    redrawMask: addMask,
    // an overlay on the image's whole extent (its width is 1 in the viewport's units): it pans and zooms with it
    setOutlines: (collection) => {
      outlines = outlineSvg(collection, tiles.width, tiles.height);
      osd.addOverlay({ element: outlines, location: new OpenSeadragon.Rect(0, 0, 1, tiles.height / tiles.width) });
    },
    showOutlines: (on) => { if (outlines) outlines.style.display = on ? "" : "none"; },
    destroy: () => osd.destroy(),
  };
}

// ---- start -----------------------------------------------------------------------------------------------

async function start() {
  $("segment-form").addEventListener("submit", submit);
  $("refresh-jobs").addEventListener("click", refreshJobs);
  $("key-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY_STORE, $("api-key").value.trim());
    $("key-section").hidden = true;
    showError(null);
    load();
  });
  await load();
}

async function load() {
  try {
    state.config = await api("viewer/config");
    await loadOptions();
    await loadModels();
    await refreshJobs();
    document.body.dataset.ready = "true";
  } catch (err) {
    showError(err);
  }
}

start();
