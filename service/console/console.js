// The operator console: plain JavaScript over the HTTP API (no framework, no build step, no CDN).
"use strict";

const KEY_STORAGE = "patchshift-key";
const state = { key: sessionStorage.getItem(KEY_STORAGE) || "", scope: null, auth: false, inspected: {}, inspectedFiles: {}, methods: null, onInspected: null, versions: {} };
const FINISHED = ["succeeded", "failed", "cancelled"];

// ---- small helpers -------------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function toast(message) {
  const box = document.getElementById("toast");
  box.textContent = message;
  box.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => box.classList.remove("show"), 4000);
}

const fmt = (value, digits = 3) => (value === null || value === undefined ? "–" : Number(value).toFixed(digits));
const isAdmin = () => state.scope === "admin";

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, { method = "GET", form = null, json = null } = {}) {
  const headers = {};
  if (state.key) headers.Authorization = "Bearer " + state.key;
  let body = form;
  if (json !== null) { headers["Content-Type"] = "application/json"; body = JSON.stringify(json); }
  const response = await fetch(path, { method, headers, body });
  if (response.status === 204) return null;
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = data && data.error ? data.error : {};
    let message = detail.message || response.statusText;
    if (detail.files) message += "\n" + detail.files.map((f) => `${f.file}: ${f.message}`).join("\n");
    if (response.status === 401) showKeyForm(message);
    throw new ApiError(response.status, message);
  }
  return data;
}

async function waitForJob(jobId, onUpdate) {
  for (;;) {
    const job = await api(`/v1/jobs/${jobId}`);
    onUpdate(job);
    if (FINISHED.includes(job.status)) return job;
    await new Promise((resolve) => setTimeout(resolve, 400));
  }
}

function filesForm(input, field = "files", extra = {}) {
  const form = new FormData();
  for (const file of input.files) form.append(field, file, file.name);
  for (const [name, value] of Object.entries(extra)) if (value !== "" && value !== null) form.append(name, value);
  return form;
}

// ---- session and key -----------------------------------------------------------------------
function showKeyForm(message) {
  document.getElementById("key-form").hidden = false;
  document.getElementById("key-error").textContent = message || "";
}

async function loadSession() {
  try {
    const session = await api("/v1/session");
    state.scope = session.scope;
    state.auth = session.auth;
    document.getElementById("key-form").hidden = true;
    document.getElementById("scope").textContent = (!session.auth ? "no API keys configured: full access"
      : session.scope === "admin" ? "admin key" : "read-only key: viewing and scoring") + ` · scoring on ${session.device}`;
    document.getElementById("forget-key").hidden = !state.key;
    return true;
  } catch (error) {
    if (error.status !== 401) toast(error.message);
    return false;
  }
}

document.getElementById("key-entry").addEventListener("submit", async (event) => {
  event.preventDefault();
  state.key = document.getElementById("key-input").value.trim();
  sessionStorage.setItem(KEY_STORAGE, state.key);
  if (await loadSession()) render();
});

document.getElementById("forget-key").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORAGE);
  location.reload();
});

// ---- models list ---------------------------------------------------------------------------
function driftTag(drift) {
  if (!drift) return el("span", { class: "muted", text: "not loaded" });
  if (drift.statistic === null) return el("span", { class: "muted", text: `collecting (${drift.recent_images} of ${drift.window} images)` });
  return el("span", {},
    el("span", { class: "tag " + (drift.drifting ? "drifting" : "quiet"), text: drift.drifting ? "DRIFTING" : "quiet" }),
    ` ${fmt(drift.statistic, 2)} against ${fmt(drift.threshold, 2)}`);
}

async function renderModels(view) {
  document.getElementById("crumb").textContent = "models";
  const models = await api("/v1/models");
  const details = await Promise.all(models.map((m) => api(`/v1/models/${encodeURIComponent(m.name)}`).catch(() => null)));
  const rows = models.map((m, i) => {
    const info = details[i];
    const active = info && info.versions.find((v) => v.active);
    return el("tr", { "data-model": m.name },
      el("td", {}, el("a", { href: `#/models/${encodeURIComponent(m.name)}`, text: m.name })),
      el("td", { text: m.active_version || "none" }),
      el("td", { text: active ? active.kind : "–" }),
      el("td", { text: active ? fmt(active.threshold) : "–" }),
      el("td", { text: active && active.bank_size !== null ? active.bank_size : "–" }),
      el("td", {}, info ? driftTag(info.drift) : "–"),
      el("td", { text: info ? info.images_scored : "–" }),
      el("td", { text: info && info.drift && info.drift.recent_anomalous_share !== null ? `${Math.round(100 * info.drift.recent_anomalous_share)}%` : "–" }),
      el("td", { text: m.loaded ? "loaded" : (info && info.load_error) || "not loaded" }));
  });
  view.replaceChildren(
    el("section", { class: "card" },
      el("h2", { text: "Models" }),
      models.length === 0 ? el("p", { class: "muted", text: "No models yet." }) :
        el("table", { id: "models" },
          el("thead", {}, el("tr", {}, ["model", "active version", "kind", "threshold", "bank rows", "drift (statistic against its threshold)", "images scored", "recent images flagged", "state"].map((t) => el("th", { text: t })))),
          el("tbody", {}, rows))),
    isAdmin() ? fitCard() : "",
    await jobsCard());
}

function fitCard() {
  const name = el("input", { id: "fit-name", placeholder: "model name", pattern: "[A-Za-z0-9][A-Za-z0-9._-]*", required: true });
  const files = el("input", { id: "fit-files", type: "file", multiple: true, accept: "image/*", required: true });
  const size = el("input", { id: "fit-size", value: "256", size: 8, title: "input size: N or WIDTHxHEIGHT" });
  const status = el("div", { id: "fit-status" });
  const start = el("button", { class: "primary", id: "fit-start", text: "Fit", onclick: async () => {
    if (!name.value || files.files.length === 0) { toast("a name and normal images are needed"); return; }
    start.disabled = true;
    try {
      const job = await api(`/v1/models/${encodeURIComponent(name.value)}/fit`, { method: "POST", form: filesForm(files, "files", { image_size: size.value }) });
      await followJob(job.job_id, status);
      render();
    } catch (error) { status.replaceChildren(el("p", { class: "error", text: error.message })); }
    start.disabled = false;
  } });
  return el("section", { class: "card" }, el("h2", { text: "New model (or a new version) from normal images" }),
    el("div", { class: "row" }, name, files, el("label", {}, "input size ", size), start), status);
}

// ---- one model -----------------------------------------------------------------------------
function versionRows(name, versions) {
  const byName = Object.fromEntries(versions.map((v) => [v.version, v]));
  const children = {};
  for (const v of versions) {
    const parent = v.parent && byName[v.parent] ? v.parent : "";
    (children[parent] = children[parent] || []).push(v);
  }
  const rows = [];
  const visit = (v, depth) => {
    rows.push(el("tr", { "data-version": v.version, class: v.active ? "active" : "" },
      el("td", {}, el("span", { class: "indent", style: `padding-left:${depth * 1.2}rem` }, depth ? "└ " : "", v.version), " ",
        v.active ? el("span", { class: "tag active", text: "ACTIVE" }) : ""),
      el("td", { text: v.method }), el("td", { text: v.kind }), el("td", { text: fmt(v.threshold) }),
      el("td", { text: v.details && v.details.gate ? (v.details.gate.better ? "found better" : "not better") : "–",
        title: v.details && v.details.gate ? v.details.gate.reason : "" }),
      el("td", { text: v.created.replace("T", " ").slice(0, 19) }),
      el("td", {}, !v.active ? el("button", { text: "Review", "data-review": v.version, onclick: () => openReview(name, v.version) }) : "", " ",
        isAdmin() && !v.active ? el("button", { text: "Activate", "data-action": "activate", onclick: () => activate(name, v.version) }) : "",
        " ", isAdmin() && !v.active ? el("button", { class: "danger", text: "Delete", "data-action": "delete", onclick: () => removeVersion(name, v.version) }) : "")));
    for (const child of children[v.version] || []) visit(child, depth + 1);
  };
  for (const root of children[""] || []) visit(root, 0);
  return rows;
}

async function activate(name, version) {
  if (!confirm(`Make ${version} the active version of ${name}? It scores from the next image on.`)) return;
  try { await api(`/v1/models/${encodeURIComponent(name)}/versions/${version}/activate`, { method: "POST" }); toast(`${version} is active`); render(); }
  catch (error) { toast(error.message); }
}

async function removeVersion(name, version) {
  if (!confirm(`Delete ${version} of ${name} for good?`)) return;
  try { await api(`/v1/models/${encodeURIComponent(name)}/versions/${version}`, { method: "DELETE" }); toast(`${version} deleted`); render(); }
  catch (error) { toast(error.message); }
}

async function renderModel(view, name) {
  document.getElementById("crumb").textContent = `models / ${name}`;
  const info = await api(`/v1/models/${encodeURIComponent(name)}`);
  const active = info.versions.find((v) => v.active);
  state.versions[name] = info.versions;
  if (!state.methods) state.methods = await api("/v1/methods");
  view.replaceChildren(
    el("section", { class: "card", id: "review", hidden: true }),
    el("section", { class: "card" },
      el("h2", { text: `${name}: versions` }),
      info.load_error ? el("p", { class: "error", text: `the active version cannot be loaded: ${info.load_error}` }) : "",
      el("table", { id: "versions" },
        el("thead", {}, el("tr", {}, ["version", "method", "kind", "threshold", "label-free check", "created", ""].map((t) => el("th", { text: t })))),
        el("tbody", {}, versionRows(name, info.versions)))),
    el("section", { class: "card", id: "drift" }, el("h2", { text: "Drift" }),
      info.drift ? el("p", {}, driftTag(info.drift), el("br"),
        `${info.drift.recent_images} recent images; ${info.drift.recent_anomalous_share === null ? "–" : Math.round(100 * info.drift.recent_anomalous_share) + "%"} of them flagged; ` +
        `auto-adapt ${info.drift.auto_adapt ? "on" : "off"}`) : el("p", { class: "muted", text: "no active version loaded" })),
    await historyCard(name, active),
    active ? inspectCard(name, active) : "",
    active ? thresholdCard(name, active) : "",
    isAdmin() && active ? adaptCard(name) : "",
    await jobsCard(name));
}

function verdictText(item) {
  return item.anomalous ? "DEFECT: score above threshold" : "OK: score below threshold";
}

function heatmapLegend() {
  return el("div", { class: "legend", id: "heatmap-legend" },
    el("span", { class: "ramp", title: "colour by the map's value against the threshold" }),
    el("span", { text: "photo untouched below 0.75 × threshold; yellow at 0.75 ×, red from 1.5 × threshold; " +
      "white outline: above the threshold; cyan circle: the highest value, where it nears the threshold" }));
}

function inspectCard(name, active) {
  const files = el("input", { id: "inspect-files", type: "file", multiple: true, accept: "image/*" });
  const results = el("div", { id: "inspect-results", class: "grid" });
  const heatmaps = active && active.kind === "patchcore";
  const go = el("button", { class: "primary", id: "inspect-start", text: "Score", onclick: async () => {
    if (files.files.length === 0) { toast("choose one or more images"); return; }
    go.disabled = true;
    try {
      // the active version's review scoring: a person's images do not count as the line's (drift, metrics, history)
      const response = await api(`/v1/models/${encodeURIComponent(name)}/versions/${active.version}/score`, { method: "POST", form: filesForm(files, "files", { heatmap: heatmaps ? "png" : "none" }) });
      state.inspected[name] = response.results.map((r) => r.score);
      state.inspectedFiles[name] = Array.from(files.files);
      results.replaceChildren(...response.results.map((r) => el("figure", { class: "result" },
        r.heatmap_png ? el("img", { src: "data:image/png;base64," + r.heatmap_png, alt: `heatmap of ${r.filename}` }) : "",
        el("figcaption", {}, el("span", { class: "verdict " + (r.anomalous ? "defect" : "ok"), text: verdictText(r) }), el("br"),
          `${r.filename}: score ${fmt(r.score)}, threshold ${fmt(r.threshold)} (version ${response.version})`))));
      document.dispatchEvent(new Event("inspected"));
    } catch (error) { results.replaceChildren(el("p", { class: "error", id: "inspect-error", text: error.message })); }
    go.disabled = false;
  } });
  return el("section", { class: "card" }, el("h2", { text: "Inspect images" }),
    el("p", { class: "muted", text: (heatmaps ? "Each image gets its score, its verdict and a heatmap of where the defect is." : "A global detector: scores and verdicts, no heatmaps.") +
      " Images inspected here do not count as the line's (drift, metrics)." }),
    el("div", { class: "row" }, files, go), heatmaps ? heatmapLegend() : "", results);
}

function thresholdCard(name, active) {
  const value = el("input", { id: "threshold-value", type: "number", step: "any", min: "0", value: Number(active.threshold.toPrecision(6)) });
  const preview = el("p", { id: "threshold-preview", class: "muted" });
  const update = () => {
    const scores = state.inspected[name] || [];
    const proposed = Number(value.value);
    if (scores.length === 0) { preview.textContent = "Score some images above to see how many this value would flag."; return; }
    const now = scores.filter((s) => s > active.threshold).length;
    const then = scores.filter((s) => s > proposed).length;
    preview.textContent = `Of the ${scores.length} images inspected here, ${then} would be flagged at ${proposed} (${now} at the current ${fmt(active.threshold)}).`;
  };
  value.addEventListener("input", update);
  state.onInspected = update;  // the page's one listener calls the card on screen now
  update();
  const save = isAdmin() ? el("button", { text: "Save as a new version", id: "threshold-save", onclick: async () => {
    if (!confirm(`Write a new version of ${name} with threshold ${value.value} and make it active?`)) return;
    try { await api(`/v1/models/${encodeURIComponent(name)}/threshold`, { method: "PUT", json: { threshold: Number(value.value) } }); toast("threshold saved"); render(); }
    catch (error) { toast(error.message); }
  } }) : "";
  let checked = "";
  if (!isAdmin()) { checked = el("p", { id: "checked-summary", class: "muted" }); showChecked(name, active.version, checked); }
  return el("section", { class: "card" }, el("h2", { text: "Threshold" }), el("div", { class: "row" }, value, save), preview,
    isAdmin() ? knownGoodRow(name) : checked);
}

// A version's threshold from parts a person has checked: a new version, not activated, with what it
// is expected to flag and how sure that is.
function knownGoodRow(name) {
  const versions = state.versions[name] || [];
  const version = el("select", { id: "known-good-version" },
    versions.slice().reverse().map((v) => el("option", { value: v.version, text: v.version + (v.active ? " (active)" : ""), selected: v.active })));
  const files = el("input", { id: "known-good-files", type: "file", multiple: true, accept: "image/*" });
  const result = el("p", { id: "known-good-result", class: "muted" });
  const go = el("button", { id: "known-good-start", text: "Set from known-good images", onclick: async () => {
    if (files.files.length === 0) { toast("choose images of parts known to be good"); return; }
    go.disabled = true;
    try {
      const r = await api(`/v1/models/${encodeURIComponent(name)}/versions/${version.value}/calibrate`, { method: "POST", form: filesForm(files, "files", {}) });
      toast(`${r.version} written (not active)`);
      await render();
      document.getElementById("known-good-result").textContent =
        `${r.version} (from ${r.parent}): threshold ${fmt(r.previous_threshold)} → ${fmt(r.threshold)}; ${r.threshold_estimate.note}. ` +
        `Activate it in the versions table once this suits the line.`;
    } catch (error) { result.replaceChildren(el("span", { class: "error", text: error.message })); go.disabled = false; }
  } });
  const checked = el("p", { id: "checked-summary", class: "muted" });
  const fromChecked = el("button", { id: "checked-calibrate", text: "Set from parts checked good", onclick: async () => {
    fromChecked.disabled = true;
    try {
      const r = await api(`/v1/models/${encodeURIComponent(name)}/versions/${version.value}/calibrate`, { method: "POST", form: filesForm({ files: [] }, "files", { from_checked_parts: "true" }) });
      toast(`${r.version} written (not active)`);
      await render();
      document.getElementById("known-good-result").textContent =
        `${r.version} (from ${r.parent}, ${r.known_good_images} parts checked good on the line): threshold ${fmt(r.previous_threshold)} → ${fmt(r.threshold)}; ` +
        `${r.threshold_estimate.note}. Activate it in the versions table once this suits the line.`;
    } catch (error) { result.replaceChildren(el("span", { class: "error", text: error.message })); fromChecked.disabled = false; }
  } });
  version.addEventListener("change", () => showChecked(name, version.value, checked));
  showChecked(name, version.value, checked);
  return el("div", {},
    el("p", { class: "muted", text: "Or give a version the threshold that images of parts known to be good give, at the version's own false-alarm rate (the note says how many images pin it):" }),
    el("div", { class: "row" }, version, files, go), checked, el("div", { class: "row" }, fromChecked), result);
}

// What a version's verdicts do on the parts a person checked (marked Good / Defective under the
// line's images), and what calibrating from the good ones would set.
let checkedRequests = 0;  // only the latest summary requested is shown (replies may come out of order)
async function showChecked(name, version, box) {
  const mine = ++checkedRequests;
  const pct = (x) => (100 * x).toFixed(1) + "%";
  const share = (g, what) => (g.count ? `${g.flagged} of ${g.count} ${what} (${pct(g.share)}; 90% interval ${pct(g.interval[0])} to ${pct(g.interval[1])})` : `no ${what} checked yet`);
  try {
    const s = await api(`/v1/models/${encodeURIComponent(name)}/versions/${version}/checked-parts`);
    if (mine !== checkedRequests) return;
    const check = s.false_alarm_check;  // above: more false alarms than the line tolerates, for sure
    const conclusion = check.note.split(": ").slice(1).join(": ");  // the counts are said above
    const verdict = check.verdict === "above" ? `Too many false alarms: ${conclusion}. ` : check.verdict === "within" ? `Its false alarms are ${conclusion}. ` : "";
    box.textContent = `Checked on the line, ${version}: it flags ${share(s.false_alarms, "good parts")} and ${share(s.recall, "defective parts")}. ${verdict}${s.calibration_note.charAt(0).toUpperCase() + s.calibration_note.slice(1)}.`;
    box.classList.toggle("error", check.verdict === "above");
  } catch (error) { if (mine === checkedRequests) box.textContent = error.message; }
}

// The name a checked part goes by: its file name (printable, at most 150 characters), when the line
// sent it and its number there; the same from the line's thumbnails and from a review of them.
function partName(image) {
  return `${image.filename.replace(/[\x00-\x1f\x7f]/g, "?").slice(-150)} @ ${new Date(image.time * 1000).toISOString()} #${image.number}`;
}

// A person's check of one line image: what they found, against the score each version gave it
// (scores: [{version, score}]: the line's version, or both versions of a review).
async function checkPart(name, image, scores, good, figure) {
  const part = partName(image);
  const buttons = figure.querySelectorAll(".check-good, .check-defective");
  buttons.forEach((b) => { b.disabled = true; });  // one check of a part at a time, for every version
  try {
    for (const s of scores) {
      await api(`/v1/models/${encodeURIComponent(name)}/versions/${s.version}/checked-parts`, { method: "POST", json: { parts: [{ part, score: s.score, good }] } });
    }
    figure.querySelector(".checked").textContent = good ? "checked: good" : "checked: defective";
    const select = document.getElementById("known-good-version"), box = document.getElementById("checked-summary");
    if (select && box && scores.some((s) => s.version === select.value)) showChecked(name, select.value, box);
  } catch (error) { toast(error.message); }
  buttons.forEach((b) => { b.disabled = false; });
}

// Good / Defective buttons for an admin under a line image (scores: as checkPart's).
function checkButtons(name, image, scores, figure) {
  return isAdmin() ? [
    el("button", { class: "check-good", text: "Good", title: "a person checked this part: no defect", onclick: () => checkPart(name, image, scores, true, figure) }), " ",
    el("button", { class: "check-defective", text: "Defective", title: "a person checked this part: a defect", onclick: () => checkPart(name, image, scores, false, figure) })] : [];
}

function adaptCard(name) {
  const files = el("input", { id: "adapt-files", type: "file", multiple: true, accept: "image/*" });
  const sources = el("input", { id: "adapt-sources", type: "file", multiple: true, accept: "image/*" });
  const sourceRow = el("div", { class: "row", hidden: true }, el("label", { text: "normal images of the old condition: " }), sources);
  const method = el("select", { id: "adapt-method" }, state.methods.map((m) => el("option", { value: m.name, text: m.name + (m.recommended ? " (recommended)" : "") })));
  const summary = el("p", { class: "muted", id: "adapt-summary" });
  const policy = el("select", { id: "adapt-activate" },
    el("option", { value: "if-better", text: "activate if a label-free check finds it better" }),
    el("option", { value: "false", text: "keep it for review" }),
    el("option", { value: "true", text: "activate when ready" }));
  const describe = () => {
    const chosen = state.methods.find((m) => m.name === method.value);
    summary.textContent = `${chosen.summary}. At least ${chosen.min_images} image${chosen.min_images === 1 ? "" : "s"}.`;
    sourceRow.hidden = !chosen.needs_source_images;
  };
  method.addEventListener("change", describe);
  describe();
  const status = el("div", { id: "adapt-status" });
  const start = el("button", { class: "primary", id: "adapt-start", text: "Adapt", onclick: async () => {
    if (files.files.length === 0) { toast("choose images of the new condition"); return; }
    start.disabled = true;
    const form = filesForm(files, "files", { method: method.value, activate: policy.value });
    for (const file of sources.files) form.append("source_files", file, file.name);
    try {
      const job = await api(`/v1/models/${encodeURIComponent(name)}/adapt`, { method: "POST", form });
      const done = await followJob(job.job_id, status);
      if (done.status === "succeeded") status.append(adaptResult(name, done));
      await refreshVersions(name);
    } catch (error) { status.replaceChildren(el("p", { class: "error", id: "adapt-error", text: error.message })); }
    start.disabled = false;
  } });
  return el("section", { class: "card" }, el("h2", { text: "Adapt to a new condition" }),
    el("p", { class: "muted", text: "Images of the new camera or lighting, as the line delivers them (defective parts included). No labels." }),
    el("div", { class: "row" }, files, method, policy, start), sourceRow, summary, status);
}

async function followJob(jobId, box) {
  const bar = el("progress", { max: 1, value: 0, id: "job-progress" });
  const line = el("p", { id: "job-stage" });
  const cancel = isAdmin() ? el("button", { class: "danger", text: "Cancel", id: "job-cancel", onclick: () => api(`/v1/jobs/${jobId}`, { method: "DELETE" }).catch((e) => toast(e.message)) }) : "";
  box.replaceChildren(bar, el("div", { class: "row" }, line, cancel));
  const job = await waitForJob(jobId, (j) => {
    bar.value = j.progress;
    line.textContent = `${j.kind} ${j.status}${j.stage ? ": " + j.stage : ""} (${Math.round(100 * j.progress)}%)`;
  });
  if (cancel) cancel.remove();
  if (job.status !== "succeeded") box.append(el("p", { class: "error", id: "job-error", text: `${job.status}: ${job.error || ""}` }));
  return job;
}

function adaptResult(name, job) {
  const r = job.result;
  const gate = r.gate ? `${r.gate.better ? "found better" : "not better"}: ${r.gate.reason}` : "not checked";
  return el("div", { id: "adapt-result" },
    el("p", {}, `New version ${job.result_version} (${r.method}): threshold ${fmt(r.threshold_before)} → ${fmt(r.threshold_after)}; `,
      `label-free check: ${gate}; `, el("strong", { text: r.activated ? "activated" : "not activated" }),
      r.not_activated ? ` (${r.not_activated})` : "", r.threshold_note ? ` Threshold: ${r.threshold_note}` : "",
      r.threshold_estimate && r.threshold_estimate.note ? el("span", { id: "threshold-estimate", text: ` Threshold: ${r.threshold_estimate.note}.` }) : "",
      r.levels ? el("span", { id: "adapt-levels", text: ` Input: ${r.levels}.` }) : ""),
    !r.activated ? el("button", { id: "adapt-review", text: `Review ${job.result_version} against the active version`, onclick: () => openReview(name, job.result_version, r) }) : "", " ",
    !r.activated && isAdmin() ? el("button", { class: "primary", id: "adapt-activate-new", text: `Activate ${job.result_version}`, onclick: () => activate(name, job.result_version) }) : "");
}

async function refreshVersions(name) {
  const info = await api(`/v1/models/${encodeURIComponent(name)}`);
  state.versions[name] = info.versions;
  document.querySelector("#versions tbody").replaceChildren(...versionRows(name, info.versions));
}

async function jobsCard(name = null) {
  // one model's jobs on its page; every model's on the models list
  const jobs = await api(name ? `/v1/jobs?model=${encodeURIComponent(name)}&limit=10` : "/v1/jobs?limit=20");
  const columns = ["created", ...(name ? [] : ["model"]), "kind", "status", "progress", "result or reason"];
  return el("section", { class: "card" }, el("h2", { text: name ? "Recent jobs" : "Recent jobs, every model" }),
    jobs.length === 0 ? el("p", { class: "muted", text: "none" }) :
      el("table", { id: "jobs" }, el("thead", {}, el("tr", {}, columns.map((t) => el("th", { text: t })))),
        el("tbody", {}, jobs.map((j) => el("tr", { "data-job": j.id }, el("td", { text: j.created.replace("T", " ").slice(0, 19) }),
          name ? "" : el("td", {}, el("a", { href: `#/models/${encodeURIComponent(j.model)}`, text: j.model })), el("td", { text: j.kind }),
          el("td", { text: j.status }), el("td", { text: `${Math.round(100 * j.progress)}%` }),
          el("td", { text: j.error || (j.result_version ? `version ${j.result_version}` : "") }))))));
}



// ---- what the line saw -----------------------------------------------------------------------
function svgEl(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function driftChart(points) {
  // the drift statistic per score request, with its threshold: above the line, the images no longer look like the version's condition
  const width = 560, height = 160, pad = 30;
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img",
    "aria-label": `drift statistic over the last ${points.length} requests; ${points.filter((p) => p.drifting).length} of them drifting` });
  const top = points.reduce((m, p) => Math.max(m, p.statistic, p.threshold), 0) * 1.1;
  const x = (i) => pad + (i / Math.max(points.length - 1, 1)) * (width - 2 * pad);
  const y = (v) => height - pad + 10 - (v / top) * (height - pad - 10);
  svg.append(svgEl("line", { x1: pad, x2: width - pad, y1: y(0), y2: y(0), stroke: "#98a2ad" }));
  const threshold = points[points.length - 1].threshold;
  svg.append(svgEl("line", { x1: pad, x2: width - pad, y1: y(threshold), y2: y(threshold), stroke: "#a3261b", "stroke-dasharray": "5 4" }));
  const label = svgEl("text", { x: pad, y: y(threshold) - 4, "font-size": 11 }); label.textContent = `drift threshold ${fmt(threshold, 1)}`; svg.append(label);
  svg.append(svgEl("polyline", { points: points.map((p, i) => `${x(i)},${y(p.statistic)}`).join(" "), fill: "none", stroke: "#1e5aa8", "stroke-width": 2 }));
  const axis = svgEl("text", { x: width - pad, y: height - 4, "font-size": 11, "text-anchor": "end" });
  axis.textContent = `last ${points.length} requests →`; svg.append(axis);
  return el("figure", { class: "strip-box", id: "drift-chart" }, svg, el("figcaption", { text: "drift statistic per score request" }));
}

function scoreHistogram(scores, threshold, version) {
  // recent scores in bins, the active threshold as a line: how close the line runs to it
  const width = 560, height = 160, pad = 30, bins = 30;
  const values = scores.map((s) => s.score);
  const low = values.reduce((m, v) => Math.min(m, v), threshold), high = values.reduce((m, v) => Math.max(m, v), threshold);
  const span = high - low || 1;
  const counts = new Array(bins).fill(0), flagged = new Array(bins).fill(0);
  for (const s of scores) {
    const b = Math.min(bins - 1, Math.floor(((s.score - low) / span) * bins));
    counts[b] += 1; if (s.anomalous) flagged[b] += 1;
  }
  const most = counts.reduce((m, c) => Math.max(m, c), 1);
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img",
    "aria-label": `${scores.length} recent scores, ${scores.filter((s) => s.anomalous).length} above their threshold` });
  const bw = (width - 2 * pad) / bins;
  counts.forEach((c, i) => {
    const h = (c / most) * (height - 2 * pad);
    svg.append(svgEl("rect", { x: pad + i * bw + 1, y: height - pad - h, width: bw - 2, height: h, fill: flagged[i] ? "#a3261b" : "#1f6f43", "fill-opacity": 0.7 }));
  });
  const tx = pad + ((threshold - low) / span) * (width - 2 * pad);
  svg.append(svgEl("line", { x1: tx, x2: tx, y1: pad - 10, y2: height - pad, stroke: "#1d232a", "stroke-width": 2, "stroke-dasharray": "4 3" }));
  const label = svgEl("text", { x: Math.min(tx + 4, width - 110), y: pad - 12, "font-size": 11 }); label.textContent = `threshold ${fmt(threshold)}`; svg.append(label);
  for (const [v, anchor] of [[low, "start"], [high, "end"]]) {
    const t = svgEl("text", { x: v === low ? pad : width - pad, y: height - pad + 14, "font-size": 11, "text-anchor": anchor }); t.textContent = fmt(v, 1); svg.append(t);
  }
  return el("figure", { class: "strip-box", id: "score-histogram" }, svg,
    el("figcaption", { text: `${scores.length} recent scores by ${version} (red: flagged), its threshold dashed` }));
}

async function historyCard(name, active) {
  const history = await api(`/v1/models/${encodeURIComponent(name)}/history`);
  const body = [];
  if (history.drift.length > 1) body.push(driftChart(history.drift));
  if (history.scores.length && active) {
    // each score against the threshold of the version that gave it: the active one's if it scored any
    const current = history.scores.filter((x) => x.version === active.version);
    const shown = current.length ? current : history.scores.filter((x) => x.version === history.scores[history.scores.length - 1].version);
    body.push(scoreHistogram(shown, shown[shown.length - 1].threshold, shown[0].version));
  }
  const charts = body.length ? el("div", { class: "grid2" }, body) : el("p", { class: "muted", text: "Nothing scored on the line since the service started." });
  const images = history.recent_images.length ? el("div", { class: "grid", id: "recent-images" }, history.recent_images.map((r) => {
    const figure = el("figure", { class: "result" },
      el("img", { src: "data:image/jpeg;base64," + r.thumbnail_jpeg, alt: `latest image ${r.filename}` }),
      el("figcaption", {}, el("span", { class: "verdict " + (r.anomalous ? "defect" : "ok"), text: r.anomalous ? "DEFECT" : "OK" }),
        ` ${r.filename}: ${fmt(r.score)} (threshold ${fmt(r.threshold)}, ${r.version}) ${new Date(r.time * 1000).toLocaleTimeString()}`,
        el("br"), el("span", { class: "checked muted" })));
    figure.querySelector("figcaption").append(...checkButtons(name, r, [{ version: r.version, score: r.score }], figure));
    return figure;
  })) : "";
  return el("section", { class: "card", id: "line-history" }, el("h2", { text: "What the line saw" }),
    el("p", { class: "muted", text: "Kept in the service's memory only, a bounded number per model (PATCHSHIFT_HISTORY_SCORES, PATCHSHIFT_RECENT_IMAGES); lost on restart." +
      (isAdmin() ? " Mark the parts you check, as they come and whatever their verdict: the service keeps each check with the version's score (not the image) and says what the verdicts really do (Threshold, below)." : "") }),
    charts, images);
}

// ---- review a candidate against the active version -----------------------------------------
function scoreStrip(scores, threshold, label) {
  // every score as a tick on one axis, the threshold as a line: what each version would flag
  const width = 460, height = 56, pad = 12;
  const low = scores.reduce((m, v) => Math.min(m, v), threshold), high = scores.reduce((m, v) => Math.max(m, v), threshold);
  const x = (v) => pad + ((v - low) / (high - low || 1)) * (width - 2 * pad);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "strip");
  svg.setAttribute("role", "img");
  const flagged = scores.filter((v) => v > threshold).length;
  svg.setAttribute("aria-label", `${label}: ${flagged} of ${scores.length} above the threshold ${fmt(threshold)}`);
  const add = (tag, attrs) => { const n = document.createElementNS(svg.namespaceURI, tag); for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v); svg.append(n); return n; };
  add("line", { x1: pad, x2: width - pad, y1: 30, y2: 30, stroke: "#98a2ad" });
  for (const v of scores) add("circle", { cx: x(v), cy: 30, r: 5, fill: v > threshold ? "#a3261b" : "#1f6f43", "fill-opacity": 0.75 });
  add("line", { x1: x(threshold), x2: x(threshold), y1: 10, y2: 50, stroke: "#1d232a", "stroke-width": 2, "stroke-dasharray": "4 3" });
  add("text", { x: Math.min(x(threshold) + 4, width - 120), y: 12, "font-size": 11 }).textContent = `threshold ${fmt(threshold)}`;
  return el("figure", { class: "strip-box" }, svg, el("figcaption", { text: `${label}: ${flagged} of ${scores.length} flagged` }));
}

function openReview(name, candidate, result = null) {
  const box = document.getElementById("review");
  const versions = state.versions[name] || [];
  const active = versions.find((v) => v.active);
  const cand = versions.find((v) => v.version === candidate);
  if (!active || !cand) { toast("the version list changed; reload the page"); return; }
  const files = el("input", { id: "review-files", type: "file", multiple: true, accept: "image/*" });
  const known = state.inspectedFiles[name] || [];
  const out = el("div", { id: "review-results" });
  const drift = result && result.drift_before !== undefined
    ? el("p", { text: `Drift of these images from the active version's condition: ${fmt(result.drift_before, 2)} seen by the active version` +
      (result.drift_after !== undefined ? `, ${fmt(result.drift_after, 2)} by ${candidate}.` : ` (${candidate} sees them through the same features).`) }) : "";
  const show = (pairs) => {  // pairs: [{filename, time?, number?, active: result, candidate: result}], the same images under both versions
    const cell = (r, version) => el("figure", { class: "result" },
      r.heatmap_png ? el("img", { src: "data:image/png;base64," + r.heatmap_png, alt: `${version}: heatmap of ${r.filename}` }) : "",
      el("figcaption", {}, el("span", { class: "verdict " + (r.anomalous ? "defect" : "ok"), text: verdictText(r) }), el("br"),
        `${version}: score ${fmt(r.score)}, threshold ${fmt(r.threshold)}`));
    out.replaceChildren(
      el("div", { class: "grid2" }, scoreStrip(pairs.map((p) => p.active.score), active.threshold, `${active.version} (active)`),
        scoreStrip(pairs.map((p) => p.candidate.score), cand.threshold, `${candidate} (candidate)`)),
      el("table", { id: "review-table" }, el("thead", {}, el("tr", {}, el("th", { text: `${active.version} (active)` }), el("th", { text: `${candidate} (candidate)` }),
        checking(pairs) ? el("th", { text: "checked by a person" }) : "")),
        el("tbody", {}, pairs.map((p) => el("tr", {}, el("td", {}, cell(p.active, active.version)), el("td", {}, cell(p.candidate, candidate)), checking(pairs) ? checkCell(p) : "")))));
  };
  // the line's parts can be checked here too: each check is kept for both versions, with each one's
  // score, so the candidate's verdicts are measured on the line before it goes live
  const checking = (pairs) => isAdmin() && pairs.length > 0 && pairs[0].number !== undefined;
  const checkCell = (p) => {
    const td = el("td", { class: "review-check" }, el("span", { class: "checked muted" }), el("br"));
    const scores = [{ version: candidate, score: p.candidate.score }];  // once, if the candidate went live meanwhile
    if (p.activeVersion !== candidate) scores.unshift({ version: p.activeVersion, score: p.active.score });
    td.append(...checkButtons(name, p, scores, td));
    return td;
  };
  const run = (button, work) => async () => {
    button.disabled = true;
    try { show(await work()); } catch (error) { out.replaceChildren(el("p", { class: "error", id: "review-error", text: error.message })); }
    button.disabled = false;
  };
  const onLine = el("button", { class: "primary", id: "review-recent", text: "Compare on the line's recent images" });
  onLine.onclick = run(onLine, async () => {
    const form = new FormData();
    form.append("heatmap", "png");
    const review = await api(`/v1/models/${encodeURIComponent(name)}/versions/${candidate}/review`, { method: "POST", form });
    // the version that scored them as active (it may have changed since the page was drawn)
    return review.images.map((i) => ({ ...i, activeVersion: review.active_version }));
  });
  const go = el("button", { id: "review-start", text: "Compare on chosen images" });
  go.onclick = run(go, async () => {
    const chosen = files.files.length ? Array.from(files.files) : known;
    if (chosen.length === 0) throw new Error("choose images, or inspect some first");
    const scoreWith = (version) => {
      const form = new FormData();
      for (const f of chosen) form.append("files", f, f.name);
      form.append("heatmap", version.kind === "patchcore" ? "png" : "none");
      return api(`/v1/models/${encodeURIComponent(name)}/versions/${version.version}/score`, { method: "POST", form });
    };
    const [before, after] = await Promise.all([scoreWith(active), scoreWith(cand)]);
    return before.results.map((r, i) => ({ filename: r.filename, active: r, candidate: after.results[i] }));
  });
  box.replaceChildren(el("h2", { text: `Review ${candidate} (${cand.method}) against the active ${active.version}` }),
    el("p", { class: "muted", text: "Both versions score the same images: the line's recent ones (kept in the service's memory), " +
      (known.length ? `the ${known.length} images inspected on this page, or images you choose.` : "or images you choose.") +
      (isAdmin() ? " On the line's images, mark the parts you check Good or Defective: each check is kept for both versions with each one's score, and the Threshold card says what the candidate's verdicts do on them and can set its threshold from the good ones." : "") }),
    el("div", { class: "row" }, onLine, files, go,
      isAdmin() ? el("button", { id: "review-activate", text: `Activate ${candidate}`, onclick: () => activate(name, candidate) }) : "",
      el("button", { text: "Close", onclick: () => { box.hidden = true; } })),
    drift, out);
  box.hidden = false;
  box.scrollIntoView();
}

// ---- routing -------------------------------------------------------------------------------
async function render() {
  const view = document.getElementById("view");
  const match = location.hash.match(/^#\/models\/([^/]+)$/);
  try {
    if (match) await renderModel(view, decodeURIComponent(match[1]));
    else await renderModels(view);
  } catch (error) {
    if (error.status !== 401) view.replaceChildren(el("p", { class: "error", text: error.message }));
  }
}

window.addEventListener("hashchange", render);
document.addEventListener("inspected", () => state.onInspected && state.onInspected());
loadSession().then((ok) => { if (ok) render(); });
