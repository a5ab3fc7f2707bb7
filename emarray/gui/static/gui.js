// emarray gui: plain JavaScript, no build step, nothing fetched from outside this server.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

async function api(method, url, body) {
  const init = {method, headers: {"Accept": "application/json"}, credentials: "same-origin"};
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(url, init);
  let data = null;
  try { data = await r.json(); } catch (e) { data = {error: `${r.status} ${r.statusText}`}; }
  return {ok: r.ok, status: r.status, data};
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const q = (path) => encodeURIComponent(path);
const fileUrl = (path) => `/file?path=${q(path)}`;
const viewUrl = (path) => `/view?path=${q(path)}`;

function fmtBytes(n) {
  if (n === null || n === undefined) return "…";
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}
function fmtSeconds(s) {
  if (s === null || s === undefined) return "";
  s = Math.round(s);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}
function when(t) {
  if (typeof t === "string") return t;
  const d = new Date(t * 1000), now = new Date();
  const hm = d.toLocaleTimeString([], {hour: "2-digit", minute: "2-digit", second: "2-digit"});
  return d.toDateString() === now.toDateString() ? hm : `${d.toLocaleDateString()} ${hm}`;
}
const tuple = (v) => (Array.isArray(v) ? v.join(", ") : (v ?? ""));
const baseName = (p) => String(p).replace(/\/+$/, "").split("/").pop();
const dirName = (p) => String(p).replace(/\/+$/, "").split("/").slice(0, -1).join("/");

// -- sortable tables ----------------------------------------------------------------------
function sortable(table, rows, render, keyOf) {
  let key = null, dir = 1;
  const draw = () => {
    const sorted = key === null ? rows : rows.slice().sort((a, b) => {
      const x = keyOf(a, key), y = keyOf(b, key);
      if (x === y) return 0;
      if (x === null || x === undefined) return 1;
      if (y === null || y === undefined) return -1;
      return (x < y ? -1 : 1) * dir;
    });
    const body = $("tbody", table);
    body.replaceChildren(...sorted.map(render));
  };
  $$("th[data-key]", table).forEach((th) => {
    th.onclick = () => {
      dir = key === th.dataset.key ? -dir : 1;
      key = th.dataset.key;
      $$("th", table).forEach((t) => t.classList.remove("asc", "desc"));
      th.classList.add(dir > 0 ? "asc" : "desc");
      draw();
    };
  });
  draw();
}

function tableOf(table, data, opts = {}) {
  const thead = $("thead", table);
  thead.replaceChildren(el("tr", {}, data.columns.map((c, i) => el("th", {"data-key": i, text: c}))));
  const fmt = (v) => (typeof v === "number" && !Number.isInteger(v) ? String(Number(v.toPrecision(4))) : (v ?? ""));
  sortable(table, data.rows, (r) => el("tr", {class: opts.best && opts.best(r) ? "best" : ""},
    r.map((v) => el("td", {text: fmt(v)}))), (r, k) => r[k]);
}

// -- the file browser (confined to the folders by the server) -------------------------------
const browser = {
  target: null,
  async open(start, onChoose) {
    this.onChoose = onChoose;
    $("#browser").hidden = false;
    await this.show(start || "");
  },
  close() { $("#browser").hidden = true; },
  async show(path) {
    const r = await api("GET", `/api/browse?path=${q(path)}`);
    if (!r.ok) { $("#browser-path").textContent = r.data.error; return; }
    const d = r.data;
    this.here = d.path;
    $("#browser-path").textContent = d.path || "the folders served";
    $("#browser-here").disabled = !d.path;
    const items = [];
    if (d.path) items.push(el("li", {class: "dir"}, el("span", {class: "name", text: "..", onclick: () => this.show(d.parent || "")})));
    for (const e of d.entries) {
      const cls = e.outside ? "outside" : e.volume ? "vol" : e.dir ? "dir" : "file";
      const li = el("li", {class: cls},
        el("span", {class: "name", text: e.name + (e.outside ? "  (a link leaving the folders)" : ""),
                    onclick: e.dir && !e.volume && !e.outside ? () => this.show(e.path) : null}),
        e.outside ? null : el("button", {type: "button", text: "choose", onclick: () => { this.close(); this.onChoose(e.path); }}));
      items.push(li);
    }
    $("#browser-list").replaceChildren(...items);
  },
};
function initBrowser() {
  if (!$("#browser")) return;
  $("#browser-close").onclick = () => browser.close();
  $("#browser-here").onclick = () => { browser.close(); browser.onChoose(browser.here); };
}

// -- catalog (what the folders hold), shared by pages --------------------------------------
let catalogPromise = null;
function catalog() {
  if (!catalogPromise) catalogPromise = api("GET", "/api/catalog").then((r) => r.data);
  return catalogPromise;
}
async function fillDatalists() {
  const c = await catalog();
  const fill = (id, rows) => {
    const dl = document.getElementById(id);
    if (dl) dl.replaceChildren(...rows.map((r) => el("option", {value: r.path, label: r.shown})));
  };
  fill("dl-volume", c.volumes);
  fill("dl-model", c.models);
  fill("dl-table", c.tables);
  fill("dl-file", c.stacks.concat(c.configs));
  fill("dl-folder", c.meshes.concat(c.results));
}

// -- a job, drawn (the Jobs page, and the panel under a form) -------------------------------
function jobCard(j, open) {
  const pct = j.total ? Math.min(100, (100 * (j.done || 0)) / j.total) : (j.state === "done" ? 100 : 0);
  const bar = el("div", {class: `bar ${j.state}`, role: "progressbar",
                         "aria-valuenow": Math.round(pct), "data-done": j.done ?? "", "data-total": j.total ?? ""},
                 el("div", {style: `width:${pct}%`}));
  const meta = el("div", {class: "job-meta"},
    j.stage ? el("span", {}, `${j.stage}: ${j.done ?? 0} of ${j.total ?? "?"} ${j.unit || "block"}s`) : null,
    j.left_s !== null && j.left_s !== undefined ? el("span", {}, `about ${fmtSeconds(j.left_s)} left`) : null,
    j.started ? el("span", {}, `started ${when(j.started)}`) : null,
    j.started && j.ended && j.state !== "running" ? el("span", {}, `took ${fmtSeconds(j.ended - j.started)}`) : null,
    j.source !== "gui" ? el("span", {}, `started on the ${j.source}`) : null);
  const buttons = el("span", {class: "right"});
  if (j.source === "gui" && (j.state === "running" || j.state === "queued"))
    buttons.append(el("button", {type: "button", class: "danger stop", text: "Stop", onclick: () => jobAction(j.id, "stop")}));
  if (j.source === "gui" && (j.state === "interrupted" || j.state === "failed") && j.resumable)
    buttons.append(el("button", {type: "button", class: "primary resume", text: "Resume", onclick: () => jobAction(j.id, "resume")}));
  const links = el("div", {class: "job-links"},
    (j.outputs || []).map((o) => el("span", {}, el("span", {class: "mono"}, baseName(o)), " ",
      el("a", {href: viewUrl(o), text: "view"}))),
    j.report ? el("a", {href: fileUrl(j.report), target: "_blank", text: "report page"}) : null,
    j.run ? el("a", {href: `/train?run=${q(j.run)}`, text: "training curve"}) : null);
  const card = el("div", {class: "job", id: `job-${j.id}`, "data-state": j.state},
    el("div", {class: "job-head"}, el("span", {class: `state ${j.state}`, text: j.state}),
       el("span", {class: "job-title", text: j.title || j.id}), buttons),
    bar, meta,
    j.error ? el("div", {class: "job-error", text: j.error}) : null,
    links);
  if (j.source !== "gui") card.append(el("div", {class: "job-meta mono", text: j.command || ""}));
  if (j.source === "gui") {
    const det = el("details", {}, el("summary", {text: "command and log"}),
                   el("div", {class: "mono job-command", text: j.command || ""}), el("pre", {class: "log", text: "…"}));
    if (open) det.open = true;
    det.addEventListener("toggle", async () => {
      if (!det.open) return;
      const r = await api("GET", `/api/jobs/${j.id}?log=60`);
      $("pre", det).textContent = (r.data.log || []).join("\n");
    });
    card.append(det);
  }
  return card;
}
async function jobAction(id, what) {
  const r = await api("POST", `/api/jobs/${id}/${what}`);
  if (!r.ok) alert(r.data.error);
  refreshJobs();
}
let refreshJobs = () => {};

async function pollBadge() {
  const r = await api("GET", "/api/jobs");
  if (!r.ok) return;
  const n = r.data.filter((j) => j.state === "running" || j.state === "queued").length;
  const b = $("#jobs-badge");
  if (b) b.textContent = n ? String(n) : "";
  return r.data;
}

// -- the Jobs page -------------------------------------------------------------------------
function initJobs() {
  const openLogs = new Set();
  refreshJobs = async () => {
    const jobs = await pollBadge();
    if (!jobs) return;
    const box = $("#jobs");
    openLogs.clear();
    $$("details[open]", box).forEach((d) => openLogs.add(d.closest(".job").id));
    if (!jobs.length) {
      box.replaceChildren(el("p", {class: "muted", text: "No jobs yet: run an operator, train a model or run a recipe."}));
      return;
    }
    // redraw only the jobs that changed (a card being clicked stays the same element)
    const cards = jobs.map((j) => {
      const key = JSON.stringify(j);
      const old = document.getElementById(`job-${j.id}`);
      if (old && old.dataset.key === key) return old;
      const c = jobCard(j, openLogs.has(`job-${j.id}`));
      c.dataset.key = key;
      return c;
    });
    const same = cards.length === box.children.length && cards.every((c, i) => box.children[i] === c);
    if (!same) box.replaceChildren(...cards);
    $$("details[open]", box).forEach((d) => d.dispatchEvent(new Event("toggle")));
  };
  refreshJobs();
  setInterval(refreshJobs, 1000);
}

// -- an operator's form ------------------------------------------------------------------
function formValues(form) {
  const values = {};
  $$(".field", form).forEach((f) => {
    const input = $("input, select", f);
    if (!input || f.classList.contains("hidden")) return;
    if (input.type === "checkbox") values[f.dataset.field] = input.checked;
    else if (input.value.trim() !== "") values[f.dataset.field] = input.value.trim();
  });
  return values;
}
function showMessage(form, name, message) {
  const f = $(`.field[data-field="${name}"]`, form);
  const m = document.getElementById(`msg-${name}`);
  if (m) m.textContent = message || "";
  if (f) f.classList.toggle("invalid", Boolean(message));
  const more = f && f.closest("details");
  if (more && message) more.open = true;
  return Boolean(f);
}
function whereVisibility(form) {
  const where = $("select[name=where]", form);
  if (!where) return;
  const w = where.value;
  const show = {workers: w !== "address", address: w === "address", slurm_config: w === "slurm",
                connect_timeout: w === "address"};
  for (const [name, on] of Object.entries(show)) {
    const f = $(`.field[data-field="${name}"]`, form);
    if (f) f.classList.toggle("hidden", !on);
  }
}
async function suggestOutput(form) {
  const out = $(".field[data-group=output] input", form);
  if (!out || out.dataset.touched) return;
  const first = $(".field[data-group=input] input", form);
  if (!first || !first.value.trim()) return;
  const r = await api("GET", `/api/suggest?operator=${q(form.getAttribute("data-operator"))}&input=${q(first.value.trim())}`);
  if (!r.ok || !r.data.path || out.dataset.touched) return;
  out.value = r.data.path;
  checkField(form, out.name);
}
const checkTimers = {};
function checkField(form, name) {
  clearTimeout(checkTimers[name]);
  checkTimers[name] = setTimeout(async () => {
    const values = formValues(form);
    const r = await api("POST", "/api/check", {operator: form.getAttribute("data-operator"), field: name,
                                                value: values[name] ?? null, values});
    if (r.ok) showMessage(form, name, r.data.message);
  }, 150);
}
function watchJob(panel, id) {
  panel.hidden = false;
  const draw = async () => {
    const r = await api("GET", `/api/jobs/${id}`);
    if (!r.ok) return;
    panel.replaceChildren(el("h2", {text: "Job"}), jobCard(r.data),
      el("p", {}, el("a", {href: "/jobs", text: "All jobs"})));
    if (["done", "failed", "interrupted"].includes(r.data.state)) clearInterval(timer);
  };
  refreshJobs = draw;
  const timer = setInterval(draw, 1000);
  draw();
}
function initForm() {
  const form = $("#opform");
  fillDatalists();
  whereVisibility(form);
  $$(".field", form).forEach((f) => {
    const input = $("input, select", f);
    if (!input) return;
    input.addEventListener("change", () => {
      if (f.dataset.group === "output") input.dataset.touched = "1";
      if (input.name === "where") whereVisibility(form);
      checkField(form, input.name);
      if (f.dataset.group === "input") suggestOutput(form);
    });
  });
  $$("button.browse", form).forEach((b) => {
    b.onclick = () => {
      const input = document.getElementById(`f-${b.dataset.for}`);
      const start = input.value ? dirName(input.value) : "";
      browser.open(start, (path) => {
        input.value = path;
        input.dispatchEvent(new Event("change"));
      });
    };
  });
  if ($(".field[data-group=input] input", form)?.value) suggestOutput(form);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $$(".field", form).forEach((f) => showMessage(form, f.dataset.field, ""));
    $("#form-msg").textContent = "";
    const r = await api("POST", "/api/jobs", {operator: form.getAttribute("data-operator"), params: formValues(form)});
    if (!r.ok) {
      let placed = false;
      for (const [name, msg] of Object.entries(r.data.fields || {})) placed = showMessage(form, name, msg) || placed;
      if (!placed) $("#form-msg").textContent = r.data.error;
      const bad = $(".field.invalid", form);
      if (bad) bad.scrollIntoView({block: "center"});
      return;
    }
    $("#form-msg").textContent = "";
    watchJob($("#started"), r.data.id);
    $("#started").scrollIntoView({block: "start"});
  });
}

// -- the Data page ---------------------------------------------------------------------------
function volumeStatus(v) {
  return v.unfinished ? `UNFINISHED (${v.made_by})` : v.made_by ? `made by ${v.made_by}` : "";
}
async function initData() {
  const c = await catalog();
  const n = c.volumes.length;
  $("#scan-time").textContent = `${n} volume${n === 1 ? "" : "s"} found in ${c.seconds} s`;
  const ops = (await api("GET", "/api/operators")).data.filter((o) => o.fields.length && o.fields[0].group === "input" && o.fields[0].kind === "volume");
  const runWith = (v) => el("select", {class: "run-with", "aria-label": "run an operator on it", onchange: (ev) => {
      const op = ops.find((o) => o.name === ev.target.value);
      if (op) location.href = `/run/${op.name}?${op.fields[0].name}=${q(v.path)}`;
    }}, el("option", {value: "", text: "run…"}),
    ops.map((o) => el("option", {value: o.name, text: o.name})));
  const sizes = {};
  const render = (v) => el("tr", {"data-path": v.path},
    el("td", {class: "thumb"}, el("img", {loading: "lazy", alt: "", src: `/api/thumbnail?path=${q(v.path)}`})),
    el("td", {}, el("strong", {text: v.name}), el("div", {class: "muted mono", text: v.shown})),
    el("td", {class: "nowrap", text: (v.shape || []).join(" × ")}), el("td", {text: v.dtype + (v.labels ? " (labels)" : "")}),
    el("td", {text: v.voxel_size ? `${tuple(v.voxel_size)} ${v.unit || ""}` : ""}),
    el("td", {class: "nowrap", text: (v.chunks || []).join("×") + (v.shards ? ` (shards ${v.shards.join("×")})` : "")}),
    el("td", {class: "size nowrap", text: fmtBytes(sizes[v.path])}),
    el("td", {class: v.unfinished ? "status-unfinished" : "", text: volumeStatus(v)}),
    el("td", {class: "acts"}, el("a", {href: viewUrl(v.path), text: "view"}), " ", runWith(v)));
  const rows = c.volumes.map((v) => ({...v, status: volumeStatus(v)}));
  sortable($("#volumes"), rows, render, (r, k) => (k === "bytes" ? sizes[r.path] : Array.isArray(r[k]) ? r[k].reduce((a, b) => a * b, 1) : r[k]));
  for (const v of c.volumes) {  // sizes one at a time: a large volume takes a while to count
    const r = await api("GET", `/api/size?path=${q(v.path)}`);
    sizes[v.path] = r.ok ? r.data.bytes : null;
    const td = $(`tr[data-path="${CSS.escape(v.path)}"] td.size`);
    if (td) td.textContent = fmtBytes(sizes[v.path]);
  }
  const li = (text, shown, ...links) => el("li", {}, el("span", {title: shown, text}), el("span", {}, ...links));
  $("#meshes").replaceChildren(...c.meshes.map((m) => li(`${m.name} (${m.objects} objects)`, m.shown, el("a", {href: viewUrl(m.path), text: "view"}))));
  $("#tables").replaceChildren(...c.tables.map((t) => li(t.name, t.shown, el("a", {href: `/evaluate?table=${q(t.path)}`, text: "open"}))));
  $("#models").replaceChildren(...c.models.map((m) => li(m.name, m.shown, el("a", {href: `/run/predict?model=${q(m.path)}`, text: "predict"}))));
  $("#stacks").replaceChildren(...c.stacks.map((s) => li(s.name, s.shown, el("a", {href: `/run/ingest?src=${q(s.path)}`, text: "ingest"}))));
  for (const id of ["meshes", "tables", "models", "stacks"])
    if (!$(`#${id}`).children.length) $(`#${id}`).append(el("li", {class: "muted", text: "none"}));
}
function initDataButtons() {
  const b = $("#ingest-browse");
  if (b) b.onclick = () => browser.open("", (path) => { location.href = `/run/ingest?src=${q(path)}`; });
}

// -- the Train page -------------------------------------------------------------------------
function niceStep(raw) {
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  return [1, 2, 2.5, 5, 10].map((m) => m * p).find((v) => v >= raw);
}
function chart(box, series, xLabel, fixedMax) {
  // series: [{name, color, points: [[x, y], ...]}]; a plain SVG line chart, y from 0
  const W = 560, H = 220, L = 46, R = 12, T = 14, B = 34;
  const pts = series.flatMap((s) => s.points);
  const svgNS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("class", "chart");
  const mk = (tag, attrs, text) => {
    const e = document.createElementNS(svgNS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e);
    return e;
  };
  if (!pts.length) {
    mk("text", {x: W / 2, y: H / 2, "text-anchor": "middle"}, "no points yet");
    box.replaceChildren(svg);
    return;
  }
  const xmax = Math.max(...pts.map((p) => p[0]), 1);
  const top = fixedMax || Math.max(...pts.map((p) => p[1]), 1e-9);
  const step = niceStep(top / 4);
  const ymax = fixedMax || Math.ceil(top / step) * step;
  const sx = (x) => L + (x / xmax) * (W - L - R), sy = (y) => T + (1 - y / ymax) * (H - T - B);
  for (let y = 0; y <= ymax + step / 2; y += step) {
    mk("line", {x1: L, x2: W - R, y1: sy(y), y2: sy(y), stroke: "#e4e8ef"});
    mk("text", {x: L - 6, y: sy(y) + 4, "text-anchor": "end"}, String(Number(y.toPrecision(3))));
  }
  for (let i = 0; i <= 4; i++) {
    const x = Math.round((xmax * i) / 4);
    mk("text", {x: sx(x), y: H - B + 16, "text-anchor": "middle"}, String(x));
  }
  mk("text", {x: (L + W - R) / 2, y: H - 4, "text-anchor": "middle"}, xLabel);
  for (const s of series) {
    if (!s.points.length) continue;
    mk("polyline", {fill: "none", stroke: s.color, "stroke-width": 2,
                    points: s.points.map((p) => `${sx(p[0])},${sy(p[1])}`).join(" "), "data-series": s.name,
                    "data-points": s.points.length});
    for (const p of s.points) if (s.dots) mk("circle", {cx: sx(p[0]), cy: sy(p[1]), r: 3, fill: s.color});
  }
  const legend = el("div", {class: "legend"}, series.map((s) => el("span", {}, el("i", {style: `background:${s.color}`}), s.name)));
  box.replaceChildren(svg, legend);
}
async function showRun(run) {
  if (!run) { $("#curve").replaceChildren(); $("#run-info").replaceChildren(); return; }
  const r = await api("GET", `/api/train/metrics?run=${q(run)}`);
  if (!r.ok) { $("#run-info").textContent = r.data.error; return; }
  const m = r.data, col = (n) => m.columns.indexOf(n);
  const series = (name, color, dots) => ({name, color, dots, points: col(name) < 0 ? [] :
    m.rows.filter((row) => row[col(name)] !== null && row[col(name)] !== "").map((row) => [row[col("step")], Number(row[col(name)])])});
  const lossBox = el("div"), valBox = el("div");
  $("#curve").replaceChildren(el("h4", {text: "training loss"}), lossBox, el("h4", {text: "validation (held-out region)"}), valBox);
  chart(lossBox, [series("loss", "#2f6fde")], "step");
  chart(valBox, [series("val_f1", "#1f8a4c", true), series("val_iou", "#b7791f", true)], "step", 1);
  const best = m.best ? `best validation at step ${m.best.step}: F1 ${Number(m.best.f1).toFixed(3)}, IoU ${Number(m.best.iou).toFixed(3)}` : "no validation yet";
  $("#run-info").replaceChildren(...[
    el("p", {class: "muted", text: `${m.rows.length ? m.rows[m.rows.length - 1][col("step")] : 0} steps logged; ${best}`}),
    el("ul", {class: "plain", id: "run-models"}, m.models.map((p) => el("li", {"data-model": p}, el("span", {class: "mono", text: baseName(p)}),
      el("a", {href: `/run/predict?model=${q(p)}${m.raw ? `&raw=${q(m.raw)}` : ""}`, class: "predict", text: "predict with it"})))),
    m.models.length ? null : el("p", {class: "muted", text: "model files appear at the first checkpoint"})].filter(Boolean));
}
async function initTrain() {
  const form = $("#trainform");
  fillDatalists();
  const c = await catalog();
  const runs = $("#runs");
  const params = new URLSearchParams(location.search);
  for (const r of c.runs) runs.append(el("option", {value: r.path, text: r.shown}));
  if (!c.runs.length) runs.append(el("option", {value: "", text: "(no runs yet)"}));
  const want = params.get("run");
  if (want && !c.runs.some((r) => r.path === want)) runs.append(el("option", {value: want, text: want}));
  if (want) runs.value = want;
  else if (c.runs.length) runs.value = c.runs[0].path;
  runs.onchange = () => showRun(runs.value);
  showRun(runs.value);
  setInterval(() => { if (runs.value) showRun(runs.value); }, 2000);
  const from = $("#t-from");
  for (const cf of (await api("GET", "/api/train/configs")).data) from.append(el("option", {value: cf.path, text: cf.shown}));
  from.onchange = async () => {
    if (!from.value) return;
    const r = await api("GET", `/api/train/config?path=${q(from.value)}`);
    if (!r.ok) { $("#train-msg").textContent = r.data.error; return; }
    $$("[name]", form).forEach((i) => { if (i.type !== "checkbox") i.value = ""; });
    for (const [k, v] of Object.entries(r.data)) {
      const i = document.getElementById(`t-${k}`);
      if (i) i.value = v;
    }
    $$("details", form).forEach((det) => { if ($$("input, select", det).some((i) => i.value)) det.open = true; });
    check();
  };
  const values = () => {
    const v = {};
    $$("[name]", form).forEach((i) => {
      if (i.type === "checkbox") { if (i.checked) v[i.name] = true; }
      else if (i.value.trim()) v[i.name] = i.value.trim();
    });
    return v;
  };
  const show = (fields) => {
    $$(".field", form).forEach((f) => {
      const m = document.getElementById(`tmsg-${f.dataset.field}`);
      const msg = fields[f.dataset.field] || "";
      if (m) m.textContent = msg;
      f.classList.toggle("invalid", Boolean(msg));
      if (msg && f.closest("details")) f.closest("details").open = true;
    });
    $("#train-msg").textContent = fields.form || "";
  };
  let timer = null;
  const check = () => {
    clearTimeout(timer);
    timer = setTimeout(async () => {
      const v = values();
      const r = await api("POST", "/api/train/check", {values: v});
      // before the essentials are in, say only what is wrong with what was typed
      const f = {};
      for (const [k, m] of Object.entries(r.data.fields || {})) if (v[k] !== undefined) f[k] = m;
      show(f);
    }, 200);
  };
  $$("[name]", form).forEach((i) => i.addEventListener("change", check));
  $$("button.browse", form).forEach((b) => {
    b.onclick = () => browser.open("", (path) => { const i = document.getElementById(b.dataset.for); i.value = path; check(); });
  });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const r = await api("POST", "/api/train", {values: values()});
    if (!r.ok) { show(r.data.fields || {form: r.data.error}); const bad = $(".field.invalid", form); if (bad) bad.scrollIntoView({block: "center"}); return; }
    show({});
    watchJob($("#started"), r.data.id);
    const out = values().out;
    if (out && ![...runs.options].some((o) => o.value === out)) runs.append(el("option", {value: out, text: out}));
    if (out) { runs.value = out; showRun(out); }
  });
}

// -- the Recipes page ------------------------------------------------------------------------
function fieldRow(f, prefix, msgPrefix) {
  let input;
  if (f.widget === "choice") {
    input = el("select", {id: `${prefix}${f.name}`, name: f.name}, f.choices.map((c) => el("option", {value: c, text: c, selected: c === f.default})));
  } else {
    input = el("input", {type: "text", id: `${prefix}${f.name}`, name: f.name, autocomplete: "off",
                         placeholder: f.default ? `default: ${f.default}` : "optional", list: f.widget === "path" ? `dl-${f.kind}` : null});
  }
  return el("div", {class: "field", "data-field": f.name, "data-group": f.group || ""},
    el("label", {for: `${prefix}${f.name}`, text: f.label}),
    el("div", {class: "control"}, input, f.unit ? el("span", {class: "unit", text: f.unit}) : null),
    f.help ? el("div", {class: "help"}, f.help, f.cli ? el("code", {text: ` ${f.cli}`}) : null) : null,
    el("div", {class: "msg", id: `${msgPrefix}${f.name}`, role: "alert"}));
}
async function initRecipes() {
  const list = (await api("GET", "/api/recipes")).data;
  const params = new URLSearchParams(location.search);
  $("#recipe-list").replaceChildren(...list.map((r) => el("li", {},
    el("a", {href: `/recipes?path=${q(r.path)}`, text: r.name, title: r.about}),
    el("span", {class: "muted", text: r.packaged ? "with emarray" : r.shown}))));
  const path = params.get("path") || (list[0] && list[0].path);
  if (!path) { $("#recipe-list").append(el("li", {class: "muted", text: "no recipes found"})); return; }
  const r = await api("GET", `/api/recipe?path=${q(path)}`);
  if (!r.ok) { $("#recipe-list").append(el("li", {class: "msg", text: r.data.error})); return; }
  const d = r.data;
  $("#recipe").hidden = false;
  $("#recipe-name").textContent = d.name;
  $("#recipe-about").textContent = d.about;
  $("#recipe-text").textContent = d.text;
  $("#recipe-vars").replaceChildren(...Object.entries(d.vars).map(([k, v]) =>
    fieldRow({name: k, label: k, widget: "text", default: v, help: `a variable of the recipe (--set ${k}=...)`, group: "var"}, "r-var-", "rmsg-var-")));
  $("#r-workdir").value = d.workdir;
  $("#recipe-where").replaceChildren(...d.where.map((f) => fieldRow(f, "r-", "rmsg-")));
  const form = $("#recipeform");
  const whereSel = $("#r-where");
  const toggle = () => {
    const w = whereSel.value;
    const show = {workers: w !== "address", address: w === "address", slurm_config: w === "slurm", connect_timeout: w === "address"};
    for (const [n, on] of Object.entries(show)) { const f = $(`#recipe-where .field[data-field="${n}"]`); if (f) f.classList.toggle("hidden", !on); }
  };
  whereSel.addEventListener("change", toggle);
  toggle();
  const values = () => {
    const vars = {}, where = {};
    $$("#recipe-vars input").forEach((i) => { if (i.value.trim()) vars[i.name] = i.value.trim(); });
    $$("#recipe-where .field:not(.hidden) input, #recipe-where select").forEach((i) => { if (i.value.trim()) where[i.name] = i.value.trim(); });
    return {vars, where, workdir: $("#r-workdir").value.trim()};
  };
  const show = (fields) => {
    $$(".msg", form).forEach((m) => { m.textContent = ""; });
    $$(".field", form).forEach((f) => f.classList.remove("invalid"));
    for (const [k, m] of Object.entries(fields || {})) {
      const box = document.getElementById(`rmsg-${k}`) || $("#rmsg-form");
      box.textContent = m;
      const f = box.closest(".field");
      if (f) f.classList.add("invalid");
    }
  };
  const replan = async () => {
    const p = await api("POST", "/api/recipes/plan", {path, values: values()});
    show(p.data.fields);
    if (!p.data.ok) return;
    $("#recipe-steps").replaceChildren(...p.data.steps.map((st) => el("li", {"data-step": st.name, "data-action": st.action},
      el("strong", {text: st.name}), el("span", {class: "muted", text: ` ${st.op} → ${baseName(st.out)}`}),
      el("span", {class: `tag ${st.action}`, text: st.action === "skip" ? "done" : st.action}),
      el("span", {class: "muted", text: ` ${st.why}`}),
      st.action === "skip" ? el("span", {}, " ", el("a", {href: viewUrl(st.out), text: "view"})) : null)));
  };
  $$("input, select", form).forEach((i) => i.addEventListener("change", replan));
  $$("button.browse", form).forEach((b) => { b.onclick = () => browser.open("", (p) => { document.getElementById(b.dataset.for).value = p; replan(); }); });
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const res = await api("POST", "/api/recipes/run", {path, values: values()});
    if (!res.ok) { show(res.data.fields || {form: res.data.error}); return; }
    watchJob($("#started"), res.data.id);
    const timer = setInterval(async () => {
      await replan();
      const j = await api("GET", `/api/jobs/${res.data.id}`);
      if (["done", "failed", "interrupted"].includes(j.data.state)) { clearInterval(timer); replan(); }
    }, 2000);
  });
  replan();
}

// -- the Evaluate page -----------------------------------------------------------------------
const num = (v, d = 3) => (v === null || v === undefined ? "" : Number(v).toFixed(d));
async function openTable(path) {
  const r = await api("GET", `/api/table?path=${q(path)}`);
  const box = $("#table-view");
  box.hidden = false;
  if (!r.ok) { $("#table-title").textContent = r.data.error; return; }
  $("#table-title").textContent = `${baseName(path)} (${r.data.count} rows${r.data.count > r.data.rows.length ? `, first ${r.data.rows.length}` : ""})`;
  tableOf($("#table"), r.data);
  box.scrollIntoView({block: "start"});
}
async function initEvaluate() {
  const d = (await api("GET", "/api/results")).data;
  const t = $("#matches");
  const cols = [["prediction_shown", "prediction"], ["truth_shown", "ground truth"], ["voi", "VOI"], ["voi_split", "split"],
                ["voi_merge", "merge"], ["adapted_rand_error", "ARAND"], ["f1_at_0.5", "F1 at IoU 0.5"], ["n_pred", "objects"], ["n_true", "true objects"]];
  $("thead", t).replaceChildren(el("tr", {}, cols.map(([k, n]) => el("th", {"data-key": k, text: n})), el("th", {})));
  const rows = d.matches.slice().sort((a, b) => (a.voi ?? 1e9) - (b.voi ?? 1e9));
  sortable(t, rows, (m) => el("tr", {class: m.best ? "best" : "", "data-path": m.path},
    el("td", {}, m.prediction_shown || "", m.best ? el("span", {class: "tag skip", text: "best"}) : null),
    el("td", {text: m.truth_shown || ""}),
    ...["voi", "voi_split", "voi_merge", "adapted_rand_error", "f1_at_0.5"].map((k) => el("td", {text: num(m[k])})),
    el("td", {text: m.n_pred ?? ""}), el("td", {text: m.n_true ?? ""}),
    el("td", {}, m.plot ? el("a", {href: fileUrl(m.plot), target: "_blank", text: "plot"}) : null, " ",
       el("button", {type: "button", class: "link", text: "table", onclick: () => openTable(m.table)}))), (r, k) => r[k]);
  if (!rows.length) $("tbody", t).append(el("tr", {}, el("td", {colspan: 10, class: "muted", text: "no match results yet: run match (Run page) against a ground truth"})));
  $("#sweeps").replaceChildren(...d.sweeps.map((sw) => {
    const best = Object.entries(sw.best || {}).map(([ch, b]) =>
      el("li", {}, `channel ${ch}: best F1 ${num(b.f1 && b.f1.f1)} at threshold ${b.f1 && b.f1.threshold}; best IoU ${num(b.iou && b.iou.iou)} at ${b.iou && b.iou.threshold}`));
    return el("div", {class: "panel result"}, el("h3", {text: sw.shown}),
      el("p", {class: "muted", text: `${sw.prob_shown || ""} against ${sw.truth_shown || ""}`}),
      el("ul", {class: "plain"}, best),
      sw.plot ? el("img", {class: "plot", src: fileUrl(sw.plot), alt: "sweep plot"}) : null,
      el("p", {}, el("button", {type: "button", text: "open the table", onclick: () => openTable(sw.table)})));
  }));
  if (!d.sweeps.length) $("#sweeps").append(el("p", {class: "muted", text: "no sweeps yet"}));
  $("#objects").replaceChildren(...d.objects.map((o) => el("div", {class: "panel result"}, el("h3", {text: o.shown}),
    el("p", {class: "muted", text: `${o.count ?? "?"} objects of ${o.labels_shown || ""}; ${num(o.total_volume_um3, 4)} µm³ in all` +
      (o.volume_um3 ? `; median ${num(o.volume_um3.median, 5)} µm³` : "")}),
    o.plot ? el("img", {class: "plot", src: fileUrl(o.plot), alt: "objects plot"}) : null,
    el("p", {}, el("button", {type: "button", text: "open the table", onclick: () => openTable(o.path)})))));
  if (!d.objects.length) $("#objects").append(el("p", {class: "muted", text: "no objects tables yet"}));
  const want = new URLSearchParams(location.search).get("table");
  if (want) openTable(want);
}

// -- the View page ----------------------------------------------------------------------------
async function initView() {
  const given = JSON.parse($("#view-given").textContent || "[]");
  const c = await catalog();
  const rows = c.volumes.filter((v) => !v.inside).map((v) => ({path: v.path, name: v.name, shown: v.shown, what: v.labels ? "labels" : "image"}))
    .concat(c.meshes.map((m) => ({path: m.path, name: m.name, shown: m.shown, what: "meshes"})));
  $("#view-list").replaceChildren(...rows.map((r) => el("li", {},
    el("label", {title: r.shown}, el("input", {type: "checkbox", name: "path", value: r.path, checked: given.includes(r.path)}),
       " ", el("a", {href: viewUrl(r.path), text: r.name})),
    el("span", {class: "muted", text: r.what}))));
  if (!rows.length) $("#view-list").append(el("li", {class: "muted", text: "no volumes in the folders"}));
}

// -- start --------------------------------------------------------------------------------
const PAGES = {
  form: initForm, jobs: initJobs, view: initView, train: initTrain, recipes: initRecipes, evaluate: initEvaluate, data: () => { initDataButtons(); initData(); },
};
document.addEventListener("DOMContentLoaded", () => {
  initBrowser();
  const page = document.body.dataset.page;
  if (PAGES[page]) PAGES[page]();
  if (page !== "jobs") { pollBadge(); setInterval(pollBadge, 5000); }
});
