// The sfumato web page: one form for every workflow, the caller's queue with live progress, and a gallery.
// Plain JavaScript talking to the server's /api/ (no build step, nothing fetched from elsewhere).
"use strict";

const $ = (id) => document.getElementById(id);
const TASKS = ["text2image", "image2image", "inpaint", "controlnet", "interpolate", "upscale"];
const FINAL = ["done", "failed", "cancelled"];
const FIELDS = ["steps", "guidance", "prior_steps", "prior_guidance", "strength", "seed", "width", "height",
                "noise_level"];
// what an upscale job leaves out: its size follows from its picture, and upscalers have no prior
const NOT_FOR_UPSCALE = ["prior_steps", "prior_guidance", "width", "height"];
const CHAIN_EXAMPLE = `# Each step's picture feeds the next: the image of image2image and inpaint,
# the hint of controlnet ($previous anywhere). Same names as sfumato info prints.
model: builtin
steps:
  - task: text2image
    prompt: a red circle on a blue background
    out: step1.png   # show this step's picture too
  - task: image2image
    prompt: a yellow circle on a blue background
    strength: 0.6
`;

// Jobs belong to whoever submitted them: this browser is one client (and the token, if the server has one).
const client = (() => {
  let id = localStorage.getItem("sfumato-client");
  if (!id || !/^[A-Za-z0-9_-]{1,64}$/.test(id)) {
    const bytes = crypto.getRandomValues(new Uint8Array(12));
    id = "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    localStorage.setItem("sfumato-client", id);
  }
  return id;
})();
const withClient = (url) => url + (url.includes("?") ? "&" : "?") + "client=" + encodeURIComponent(client);

const state = {
  workflow: "text2image",
  models: [],
  depthModels: [],      // the server's registered depth models (GET /api/models)
  jobs: new Map(),      // id -> the server's view of the job
  following: new Map(), // id -> EventSource
  image: null,          // {src, ref | dataURL, width, height}
  hint: null,
  reproduce: null,
  items: [],            // interpolate: {kind: "text", text} | {kind: "picture", src, ref | dataURL}, weight
  erase: false,
  opened: null,         // the picture shown in the details dialog: {job, image}
};

async function api(method, url, body) {
  const options = { method, headers: { "X-Sfumato-Client": client } };
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  const response = await fetch(url, options);
  let data = null;
  try { data = await response.json(); } catch (error) { data = null; }
  if (!response.ok) {
    const error = new Error((data && data.detail) || `${response.status} ${response.statusText}`);
    error.field = data && data.field;
    error.position = data && data.position; // a prompt's weighting syntax: where the mistake is
    throw error;
  }
  return data;
}

// ------------------------------------------------------------------------------------------ the form

function showWorkflow(workflow) {
  state.workflow = workflow;
  document.querySelectorAll("#workflows button").forEach((b) => b.classList.toggle("active", b.dataset.workflow === workflow));
  document.querySelectorAll("[data-for]").forEach((element) => {
    element.hidden = !element.dataset.for.split(" ").includes(workflow);
  });
  $("submit").textContent = workflow === "reproduce" ? "Reproduce" : workflow === "chain" ? "Run chain" : "Generate";
  $("image-label").textContent = workflow === "inpaint" ? "Picture and mask"
    : workflow === "controlnet" ? "Starting picture (optional)" : "Picture";
  if (workflow === "interpolate" && state.items.length === 0) {
    state.items = [{ kind: "text", text: "", weight: 0.5 }, { kind: "text", text: "", weight: 0.5 }];
  }
  if (workflow === "chain" && !$("chain").value) $("chain").value = CHAIN_EXAMPLE;
  renderItems();
  fillModels();
  clearMessage();
}

function fillModels() {
  const select = $("model");
  const current = select.value;
  const usable = state.models.filter((m) => m.workflows.includes(state.workflow));
  select.innerHTML = "";
  for (const model of usable) {
    const option = document.createElement("option");
    option.value = model.name;
    option.textContent = model.name === "builtin" ? "builtin (demo model, 64x64)" : model.name;
    select.append(option);
  }
  if (usable.some((m) => m.name === current)) select.value = current;
  applyModelDefaults();
}

function applyModelDefaults() {
  const model = state.models.find((m) => m.name === $("model").value) || state.models[0];
  if (!model) return;
  $("model-note").textContent = model.note ? model.note[0].toUpperCase() + model.note.slice(1) + "." : "";
  const defaults = model.defaults || {};
  for (const name of FIELDS) {
    if (defaults[name] !== undefined) $(name).placeholder = String(defaults[name]);
  }
  if (!$("strength").placeholder) $("strength").placeholder = "0.3";
  showControlModels(model);
}

// A Stable Diffusion model's ControlNet jobs name one of the ControlNets the server offers (its operator
// registers them); a depth model, where the server has one, makes the hint from an ordinary picture.
function showControlModels(model) {
  const controlnet = state.workflow === "controlnet";
  const names = controlnet && model && Array.isArray(model.controlnets) ? model.controlnets : null;
  const select = $("controlnet");
  const current = select.value;
  select.innerHTML = "";
  for (const name of names || []) {
    const option = document.createElement("option");
    option.value = option.textContent = name;
    select.append(option);
  }
  if ((names || []).includes(current)) select.value = current;
  $("controlnet-row").hidden = !names;
  $("controlnet-scale-label").hidden = !names;
  // Stable Diffusion has no prior
  for (const name of ["prior_steps", "prior_guidance"]) {
    $(name).closest("label").hidden = !!names || !$(name).closest("label").dataset.for.split(" ").includes(state.workflow);
  }
  $("depth-row").hidden = !controlnet || state.depthModels.length === 0;
  showHintLabel();
}

function showHintLabel() {
  const depth = !$("depth-row").hidden && $("depth_model").value;
  $("hint-label").textContent = depth ? "Picture (its depth map steers)" : "Hint (depth map, silhouette…)";
}

function numberField(id) {
  const text = $(id).value.trim();
  if (text === "") return undefined;
  const value = Number(text);
  return Number.isFinite(value) ? value : text; // the server names what is wrong with it
}

function picture(source) {
  return source.ref || source.dataURL;
}

function payload() {
  const workflow = state.workflow;
  if (workflow === "reproduce") {
    if (!state.reproduce) throw fieldError("reproduce", "choose a PNG made by sfumato, or press Reproduce on a result");
    return { reproduce: picture(state.reproduce) };
  }
  const seed = numberField("seed");
  const num = numberField("num");
  if (workflow === "chain") {
    const chain = { chain: $("chain").value };
    if (seed !== undefined) chain.seed = seed;
    if (num !== undefined) chain.num = num;
    return chain;
  }
  const job = { task: workflow, model: $("model").value || undefined };
  if (workflow !== "interpolate" && !(workflow === "upscale" && !$("prompt").value.trim())) job.prompt = $("prompt").value;
  if (workflow !== "interpolate") job.weighting = $("weighting").checked;
  const negative = $("negative_prompt").value.trim();
  if (negative) job.negative_prompt = negative;
  for (const name of FIELDS) {
    // strength: how much of a starting picture changes (ControlNet starts from one only when given)
    if (name === "strength" && !(workflow === "image2image" || (workflow === "controlnet" && state.image))) continue;
    if (name === "noise_level" && workflow !== "upscale") continue;
    if (workflow === "upscale" && NOT_FOR_UPSCALE.includes(name)) continue;
    if ($(name).closest("label").hidden) continue; // e.g. prior settings for Stable Diffusion
    const value = numberField(name);
    if (value !== undefined) job[name] = value;
  }
  if (num !== undefined) job.num = num;
  if ($("scheduler").value) job.scheduler = $("scheduler").value;
  if (workflow === "image2image" || workflow === "inpaint" || workflow === "upscale") {
    if (!state.image) throw fieldError("image", "choose the picture to start from");
    job.image = picture(state.image);
  }
  if (workflow === "inpaint") {
    job.mask = maskDataURL();
    job.keep_unmasked = $("keep_unmasked").checked;
  }
  if (workflow === "controlnet") {
    if (!state.hint) throw fieldError("hint", "choose a hint picture");
    job.hint = picture(state.hint);
    if (state.image) job.image = picture(state.image); // ControlNet image-to-image
    if (!$("controlnet-row").hidden) {
      if (!$("controlnet").value) throw fieldError("controlnet", "this server offers no ControlNet for this model");
      job.controlnet = $("controlnet").value;
      const scale = numberField("controlnet_scale");
      if (scale !== undefined) job.controlnet_scale = scale;
    }
    if (!$("depth-row").hidden && $("depth_model").value) job.depth_model = $("depth_model").value;
  }
  if (workflow === "interpolate") {
    job.items = state.items.map((item) => (item.kind === "text" ? item.text : { image: picture(item) }));
    job.weights = state.items.map((item) => Number(item.weight));
  }
  return job;
}

function fieldError(field, message) {
  const error = new Error(`${field}: ${message}`);
  error.field = field;
  return error;
}

async function submit(event) {
  if (event) event.preventDefault();
  clearMessage();
  let body;
  try {
    body = payload();
  } catch (error) {
    return showError(error);
  }
  $("submit").disabled = true;
  try {
    const job = await api("POST", "/api/jobs", body);
    state.jobs.set(job.id, job);
    follow(job.id);
    render();
    const notes = (job.warnings || []).join("; ");
    showMessage(`Queued (position ${job.position}).` + (notes ? ` Note: ${notes}` : ""), "info");
  } catch (error) {
    showError(error);
  } finally {
    $("submit").disabled = false;
  }
}

function showError(error) {
  showMessage(error.message, "error");
  if (error.field) {
    const element = document.querySelector(`[data-field="${CSS.escape(error.field.split(".")[0].split("[")[0])}"]`);
    if (element && element.offsetParent !== null) {
      element.classList.add("invalid");
      if (element.focus) element.focus({ preventScroll: false });
      if (Number.isInteger(error.position) && element.setSelectionRange) {
        element.setSelectionRange(error.position, error.position + 1); // the character the syntax error names
      }
    }
  }
}

function showMessage(text, kind) {
  $("message").textContent = text;
  $("message").className = "message " + kind;
}

function clearMessage() {
  $("message").textContent = "";
  document.querySelectorAll(".invalid").forEach((element) => element.classList.remove("invalid"));
}

// ------------------------------------------------------------------------------------------ pictures

function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the browser cannot show this picture"));
    image.src = src;
  });
}

async function setImage(source) {
  const image = await loadImage(source.src);
  state.image = { ...source, width: image.naturalWidth, height: image.naturalHeight };
  const canvas = $("image-canvas");
  const mask = $("mask-canvas");
  canvas.width = mask.width = image.naturalWidth;
  canvas.height = mask.height = image.naturalHeight;
  canvas.getContext("2d").drawImage(image, 0, 0);
  mask.getContext("2d").clearRect(0, 0, mask.width, mask.height);
  $("brush").max = String(Math.max(8, Math.round(Math.max(image.naturalWidth, image.naturalHeight) / 2)));
  $("brush").value = String(Math.max(2, Math.round(Math.max(image.naturalWidth, image.naturalHeight) / 8)));
  $("image-stack").hidden = false;
  $("image-hint").hidden = true;
}

function clearImage() {
  state.image = null;
  $("image-stack").hidden = true;
  $("image-hint").hidden = false;
}

async function setPreview(kind, source) {
  await loadImage(source.src);
  state[kind] = source;
  $(`${kind}-preview`).src = source.src;
  $(`${kind}-preview`).hidden = false;
  $(`${kind}-hint`).hidden = true;
}

async function fromFile(file, use) {
  if (!file) return;
  try {
    const dataURL = await readFile(file);
    await use({ src: dataURL, dataURL });
  } catch (error) {
    showError(error);
  }
}

function dropZone(zone, use) {
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("over");
    fromFile(event.dataTransfer.files[0], use);
  });
}

// the mask: white strokes on a transparent layer over the picture; sent as white-on-black
function paintAt(event, last) {
  const mask = $("mask-canvas");
  const box = mask.getBoundingClientRect();
  const x = ((event.clientX - box.left) / box.width) * mask.width;
  const y = ((event.clientY - box.top) / box.height) * mask.height;
  const context = mask.getContext("2d");
  context.globalCompositeOperation = state.erase ? "destination-out" : "source-over";
  context.strokeStyle = context.fillStyle = "#ffffff";
  context.lineWidth = Number($("brush").value);
  context.lineCap = context.lineJoin = "round";
  context.beginPath();
  if (last) {
    context.moveTo(last.x, last.y);
    context.lineTo(x, y);
    context.stroke();
  } else {
    context.arc(x, y, context.lineWidth / 2, 0, Math.PI * 2);
    context.fill();
  }
  return { x, y };
}

function setupMask() {
  const mask = $("mask-canvas");
  let last = null;
  mask.addEventListener("pointerdown", (event) => {
    mask.setPointerCapture(event.pointerId);
    last = paintAt(event, null);
    $("image-drop").classList.remove("invalid");
  });
  mask.addEventListener("pointermove", (event) => { if (last) last = paintAt(event, last); });
  const stop = () => { last = null; };
  mask.addEventListener("pointerup", stop);
  mask.addEventListener("pointercancel", stop);
  $("mask-clear").addEventListener("click", () => mask.getContext("2d").clearRect(0, 0, mask.width, mask.height));
  $("mask-erase").addEventListener("click", () => {
    state.erase = !state.erase;
    $("mask-erase").classList.toggle("on", state.erase);
  });
  $("mask-invert").addEventListener("click", () => {
    const copy = document.createElement("canvas");
    copy.width = mask.width;
    copy.height = mask.height;
    copy.getContext("2d").drawImage(mask, 0, 0);
    const context = mask.getContext("2d");
    context.globalCompositeOperation = "source-over";
    context.fillStyle = "#ffffff";
    context.fillRect(0, 0, mask.width, mask.height);
    context.globalCompositeOperation = "destination-out";
    context.drawImage(copy, 0, 0);
    context.globalCompositeOperation = "source-over";
  });
  $("mask-file").addEventListener("change", (event) => fromFile(event.target.files[0], async (source) => {
    if (!state.image) throw fieldError("image", "choose the picture before its mask");
    const image = await loadImage(source.src);
    const context = mask.getContext("2d");
    const scratch = document.createElement("canvas");
    scratch.width = mask.width;
    scratch.height = mask.height;
    const scratchContext = scratch.getContext("2d");
    scratchContext.drawImage(image, 0, 0, mask.width, mask.height);
    const pixels = scratchContext.getImageData(0, 0, mask.width, mask.height);
    for (let i = 0; i < pixels.data.length; i += 4) {
      const light = (pixels.data[i] + pixels.data[i + 1] + pixels.data[i + 2]) / 3;
      pixels.data[i] = pixels.data[i + 1] = pixels.data[i + 2] = 255;
      pixels.data[i + 3] = light > 127 ? 255 : 0;
    }
    context.putImageData(pixels, 0, 0);
  }));
}

function maskDataURL() {
  const mask = $("mask-canvas");
  const out = document.createElement("canvas");
  out.width = mask.width;
  out.height = mask.height;
  const context = out.getContext("2d");
  context.fillStyle = "#000000";
  context.fillRect(0, 0, out.width, out.height);
  context.drawImage(mask, 0, 0);
  const pixels = context.getImageData(0, 0, out.width, out.height).data;
  let painted = false;
  for (let i = 0; i < pixels.length; i += 4) if (pixels[i] > 127) { painted = true; break; }
  if (!painted) throw fieldError("image", "paint the part of the picture to repaint (the mask is empty)");
  return out.toDataURL("image/png");
}

// ------------------------------------------------------------------------------------------ interpolate

function renderItems() {
  const list = $("items");
  list.innerHTML = "";
  state.items.forEach((item, index) => {
    const row = document.createElement("li");
    if (item.kind === "text") {
      const input = document.createElement("input");
      input.type = "text";
      input.value = item.text;
      input.placeholder = index === 0 ? "a red circle on a blue background" : "a green square on a blue background";
      input.addEventListener("input", () => { item.text = input.value; });
      row.append(input);
    } else {
      const holder = document.createElement("span");
      holder.className = "picture-item";
      const image = document.createElement("img");
      image.src = item.src;
      holder.append(image, document.createTextNode("picture"));
      row.append(holder);
    }
    const weight = document.createElement("input");
    weight.type = "number";
    weight.step = "0.1";
    weight.value = item.weight;
    weight.title = "weight";
    weight.addEventListener("input", () => { item.weight = weight.value; });
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "small";
    remove.textContent = "✕";
    remove.title = "remove";
    remove.addEventListener("click", () => { state.items.splice(index, 1); renderItems(); });
    row.append(weight, remove);
    list.append(row);
  });
}

// ------------------------------------------------------------------------------------------ queue and gallery

function follow(id) {
  if (state.following.has(id)) return;
  const source = new EventSource(withClient(`/api/jobs/${id}/events`));
  state.following.set(id, source);
  const update = (event) => {
    const view = JSON.parse(event.data);
    const known = state.jobs.get(id) || {};
    state.jobs.set(id, { ...known, ...view });
    if (known.state !== view.state) refreshServer().catch(() => {});
    if (FINAL.includes(view.state)) {
      source.close();
      state.following.delete(id);
      finished(id);
    }
    render();
  };
  source.addEventListener("progress", update);
  for (const name of FINAL) source.addEventListener(name, update);
  source.onerror = () => {
    source.close();
    state.following.delete(id);
  };
}

async function finished(id) {
  try {
    state.jobs.set(id, await api("GET", `/api/jobs/${id}`));
    render();
    refreshServer();
  } catch (error) {
    /* the next refresh tries again */
  }
}

function describeState(job) {
  if (job.state === "queued") return job.position ? `queued · #${job.position}` : "queued";
  if (job.state === "running") {
    const p = job.progress || {};
    if (job.cancel_requested) return "stopping…";
    if (p.stage === "loading" || p.stage === "starting") return "loading model…";
    const picture = p.pictures > 1 ? ` · picture ${p.picture}/${p.pictures}` : "";
    return `${p.stage} ${p.step}/${p.steps}${picture}`;
  }
  return job.state;
}

function title(job) {
  const summary = job.summary || {};
  const what = summary.prompt || summary.final_task || summary.task || job.kind;
  return (job.kind === "job" ? "" : `${job.kind}: `) + what;
}

function render() {
  const jobs = Array.from(state.jobs.values());
  const active = jobs.filter((job) => !FINAL.includes(job.state)).sort((a, b) => a.created - b.created);
  const queue = $("queue");
  queue.innerHTML = "";
  for (const job of active) {
    const item = document.createElement("li");
    item.className = `job ${job.state}`;
    item.dataset.id = job.id;
    const fraction = job.state === "running" ? (job.progress && job.progress.fraction) || 0 : 0;
    item.innerHTML = `<div class="line1"><span class="what"></span><button type="button" class="cancel small" title="cancel">✕</button></div>
      <div class="bar"><div style="width:${(fraction * 100).toFixed(1)}%"></div></div>
      <div class="detail"><span class="state"></span><span>${Math.round(fraction * 100)}%</span></div>`;
    item.querySelector(".what").textContent = title(job);
    item.querySelector(".what").title = title(job);
    item.querySelector(".state").textContent = describeState(job);
    item.querySelector(".cancel").addEventListener("click", () => cancel(job.id));
    queue.append(item);
  }
  $("queue-empty").hidden = active.length > 0;
  $("queue-count").textContent = active.length ? String(active.length) : "";

  const gallery = $("gallery");
  gallery.innerHTML = "";
  const ended = jobs.filter((job) => job.state === "done" || job.state === "failed")
    .sort((a, b) => (b.finished || 0) - (a.finished || 0));
  let cards = 0;
  for (const job of ended) {
    if (job.state === "failed") {
      const card = document.createElement("div");
      card.className = "card failed";
      card.innerHTML = `<div class="caption"><b></b><span></span></div>`;
      card.querySelector("b").textContent = title(job);
      card.querySelector("span").textContent = "failed: " + ((job.error && job.error.message) || "");
      gallery.append(card);
      cards++;
      continue;
    }
    for (const image of job.images || []) {
      const record = image.record || {};
      const card = document.createElement("div");
      card.className = "card";
      card.dataset.job = job.id;
      card.dataset.n = image.n;
      card.innerHTML = `<img alt="" loading="lazy"><div class="caption"><b></b><span></span></div>`;
      card.querySelector("img").src = withClient(image.url);
      card.querySelector("img").alt = record.prompt || title(job);
      card.querySelector("b").textContent = record.prompt || title(job);
      const size = record.width ? ` · ${record.width}x${record.height}` : "";
      card.querySelector("span").textContent = (record.seed !== undefined ? `seed ${record.seed}` : record.task || "") + size;
      card.addEventListener("click", () => openDetails(job.id, image.n));
      gallery.append(card);
      cards++;
    }
  }
  $("gallery-empty").hidden = cards > 0;
}

async function cancel(id) {
  try {
    state.jobs.set(id, { ...state.jobs.get(id), ...(await api("DELETE", `/api/jobs/${id}`)) });
    render();
  } catch (error) {
    showError(error);
  }
}

async function deleteOpened() {
  const { job } = state.opened;
  const count = (job.images || []).length;
  if (!window.confirm(`Delete this job and its ${count} picture${count === 1 ? "" : "s"} from the server?`)) return;
  try {
    await api("DELETE", `/api/jobs/${job.id}?remove=true`);
    $("details").close();
    state.jobs.delete(job.id);
    render();
    showMessage("Job deleted.", "info");
  } catch (error) {
    showError(error);
  }
}

async function refreshServer() {
  const server = await api("GET", "/api/server");
  const queue = server.queue || {};
  $("server-info").textContent = `sfumato ${server.sfumato} · ${server.device} · ` +
    `${queue.running || 0} running, ${queue.queued || 0} queued on the server` + (server.token_required ? " · token" : "");
}

async function refresh() {
  try {
    const [list] = await Promise.all([api("GET", "/api/jobs?limit=100"), refreshServer()]);
    for (const view of list.jobs) {
      const known = state.jobs.get(view.id);
      state.jobs.set(view.id, { ...(known || {}), ...view, images: mergeImages(known, view) });
      if (!FINAL.includes(view.state)) follow(view.id);
      else if (view.state === "done" && !(known && known.images && known.images[0] && known.images[0].record)) finished(view.id);
    }
    if (list.jobs.length < 100) {
      // the whole history came back: finished jobs missing from it were deleted (in another tab, or as too old)
      const listed = new Set(list.jobs.map((view) => view.id));
      for (const [id, job] of state.jobs) if (FINAL.includes(job.state) && !listed.has(id)) state.jobs.delete(id);
    }
    render();
  } catch (error) {
    $("server-info").textContent = "cannot reach the server: " + error.message;
  }
}

function mergeImages(known, view) {
  if (known && known.images && known.images.length && known.images[0].record) return known.images;
  return view.images;
}

// ------------------------------------------------------------------------------------------ details

const INFO_ORDER = ["task", "command", "prompt", "negative_prompt", "weighting", "items", "weights", "image", "mask",
  "keep_unmasked", "hint", "controlnet", "controlnet_scale", "depth_model", "strength", "seed", "steps", "guidance", "prior_steps", "prior_guidance", "width", "height", "scheduler",
  "scheduler_class", "model", "prior", "dtype", "device", "cpu_threads", "index", "num", "sfumato"];

function showParams(list, record) {
  list.innerHTML = "";
  const keys = INFO_ORDER.filter((k) => k in record).concat(Object.keys(record).filter((k) => !INFO_ORDER.includes(k)).sort());
  for (const key of keys) {
    if (key === "input_sha256") continue;
    let value = record[key];
    if (value && typeof value === "object") {
      if (key === "items") value = value.map((item) => item.text !== undefined ? item.text : "(picture)").join(" + ");
      else if (["image", "mask", "hint"].includes(key)) value = `made by an earlier ${value.task} step (seed ${value.seed})`;
      else value = JSON.stringify(value);
    } else if (typeof value === "string" && ["image", "mask", "hint", "controlnet", "depth_model"].includes(key)) {
      value = value.split("/").pop();
    }
    const term = document.createElement("dt");
    term.textContent = key;
    const detail = document.createElement("dd");
    detail.textContent = value === null || value === undefined ? "(none)" : String(value);
    list.append(term, detail);
  }
}

async function openDetails(id, n) {
  let job = state.jobs.get(id);
  if (!job.images || !job.images[n] || !job.images[n].record) {
    job = await api("GET", `/api/jobs/${id}`);
    state.jobs.set(id, job);
  }
  const image = job.images.find((i) => i.n === Number(n));
  state.opened = { job, image };
  $("details-img").src = withClient(image.url);
  $("details-title").textContent = image.record.prompt || title(job);
  showParams($("details-params"), image.record);
  const reproduced = job.result && job.result.reproduced;
  if (reproduced) {
    const term = document.createElement("dt");
    term.textContent = "reproduced";
    const detail = document.createElement("dd");
    detail.textContent = reproduced.identical ? "pixels identical to the original" : `pixels differ: ${reproduced.difference}`;
    $("details-params").prepend(term, detail);
  }
  $("download").href = withClient(image.url);
  $("download").download = `sfumato-${id.slice(0, 8)}-${n}.png`;
  $("details").showModal();
}

async function useAsInput() {
  const { image } = state.opened;
  const source = { src: withClient(image.url), ref: image.ref };
  $("details").close();
  if (state.workflow === "controlnet") await setPreview("hint", source);
  else if (state.workflow === "interpolate") {
    state.items.push({ kind: "picture", ...source, weight: 0.5 });
    renderItems();
  } else if (state.workflow === "reproduce") await setPreview("reproduce", source);
  else {
    if (!["image2image", "inpaint", "upscale"].includes(state.workflow)) showWorkflow("image2image");
    await setImage(source);
  }
  showMessage("Picture set as input.", "info");
}

function reuseSettings() {
  const record = state.opened.image.record;
  $("details").close();
  if (TASKS.includes(record.task)) showWorkflow(record.task);
  $("prompt").value = record.prompt || "";
  $("negative_prompt").value = record.negative_prompt || "";
  for (const name of FIELDS) $(name).value = record[name] !== undefined && record[name] !== null ? record[name] : "";
  $("scheduler").value = record.scheduler || "";
  $("weighting").checked = record.weighting !== false;
  const model = state.models.find((m) => m.name === record.model || m.spec === record.model ||
    (record.model || "").startsWith("builtin") && m.name === "builtin");
  if (model) $("model").value = model.name;
  applyModelDefaults();
  // the record holds the server's folders; the job's request names them as the page does
  const request = (state.opened.job && state.opened.job.request) || {};
  $("controlnet_scale").value = record.controlnet_scale ?? "";
  if (typeof request.controlnet === "string") $("controlnet").value = request.controlnet;
  $("depth_model").value = typeof request.depth_model === "string" &&
    state.depthModels.some((d) => d.name === request.depth_model) ? request.depth_model : "";
  showHintLabel();
  if (record.task === "interpolate" && Array.isArray(record.items)) {
    state.items = record.items.filter((item) => item.text !== undefined)
      .map((item, i) => ({ kind: "text", text: item.text, weight: (record.weights || [])[i] ?? 0.5 }));
    renderItems();
  }
  showMessage("Settings copied from the picture (seed included).", "info");
}

async function reproduceOpened() {
  const { image } = state.opened;
  $("details").close();
  try {
    const job = await api("POST", "/api/jobs", { reproduce: image.ref });
    state.jobs.set(job.id, job);
    follow(job.id);
    render();
    showMessage("Reproducing: the same pixels again, compared when done.", "info");
  } catch (error) {
    showError(error);
  }
}

// ------------------------------------------------------------------------------------------ start

async function start() {
  document.querySelectorAll("#workflows button").forEach((button) =>
    button.addEventListener("click", () => showWorkflow(button.dataset.workflow)));
  $("job-form").addEventListener("submit", submit);
  document.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key === "Enter") submit(event);
  });
  $("job-form").addEventListener("input", (event) => event.target.classList.remove("invalid"));
  $("model").addEventListener("change", applyModelDefaults);
  $("depth_model").addEventListener("change", showHintLabel);
  $("seed-random").addEventListener("click", () => { $("seed").value = Math.floor(Math.random() * 2 ** 32); });
  $("image-file").addEventListener("change", (event) => fromFile(event.target.files[0], setImage));
  $("image-clear").addEventListener("click", clearImage);
  $("hint-file").addEventListener("change", (event) => fromFile(event.target.files[0], (s) => setPreview("hint", s)));
  $("reproduce-file").addEventListener("change", (event) => fromFile(event.target.files[0], showReproduce));
  dropZone($("image-drop"), setImage);
  dropZone($("hint-drop"), (s) => setPreview("hint", s));
  dropZone($("reproduce-drop"), showReproduce);
  $("add-text").addEventListener("click", () => { state.items.push({ kind: "text", text: "", weight: 0.5 }); renderItems(); });
  $("add-picture").addEventListener("change", (event) => fromFile(event.target.files[0], async (source) => {
    state.items.push({ kind: "picture", ...source, weight: 0.5 });
    renderItems();
  }));
  setupMask();
  $("use-input").addEventListener("click", useAsInput);
  $("reuse").addEventListener("click", reuseSettings);
  $("reproduce").addEventListener("click", reproduceOpened);
  $("delete-job").addEventListener("click", deleteOpened);

  try {
    const models = await api("GET", "/api/models");
    state.models = models.models;
    state.depthModels = models.depth_models || [];
    for (const depth of state.depthModels) {
      const option = document.createElement("option");
      option.value = depth.name;
      option.textContent = depth.model_type ? `${depth.name} (${depth.model_type})` : depth.name;
      $("depth_model").append(option);
    }
    // the upscale tab only where the server offers an upscaler
    document.querySelector("[data-workflow=upscale]").hidden =
      !state.models.some((model) => model.workflows.includes("upscale"));
    for (const name of models.schedulers) {
      const option = document.createElement("option");
      option.value = option.textContent = name;
      $("scheduler").append(option);
    }
  } catch (error) {
    showError(error);
  }
  showWorkflow("text2image");
  await refresh();
  setInterval(refresh, 4000);
}

async function showReproduce(source) {
  await setPreview("reproduce", source);
  $("reproduce-params").innerHTML = "";
  if (!source.dataURL) return;
  try {
    const info = await api("POST", "/api/info", { image: source.dataURL });
    showParams($("reproduce-params"), info.record);
  } catch (error) {
    showError(error);
  }
}

start();
