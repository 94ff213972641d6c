// lorafarm widget: submit through the async job API, follow its Server-Sent Events, show the image.
// Events are read with fetch (not EventSource) so that every call can carry the API key, if any.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const root = $("widget");
  const model = root.dataset.model;
  const api = root.dataset.api || "";
  const ui = {
    form: $("form"), prompt: $("prompt"), negative: $("negative"), steps: $("steps"), seed: $("seed"),
    button: $("compute"), bar: $("progress"), fill: $("fill"), status: $("status"),
    output: $("output"), image: $("image"), meta: $("meta"), error: $("error"), job: $("job"),
    key: $("key"), advanced: $("advanced"),
  };
  const TERMINAL = new Set(["done", "failed", "cancelled"]);
  const KEY_STORE = "lorafarm-api-key";
  const RECONNECTS = 5;
  let source = null; // the AbortController of the event stream being read
  let started = 0;

  ui.key.value = sessionStorage.getItem(KEY_STORE) || "";

  function authHeaders() {
    const key = ui.key.value.trim();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  async function errorOf(resp) {
    const body = await resp.json().catch(() => ({ error: resp.statusText }));
    if (resp.status === 401) {
      ui.advanced.open = true;
      ui.key.focus();
    }
    return body;
  }

  function setProgress(percent, queued) {
    const value = Math.max(0, Math.min(100, Math.round(percent)));
    ui.bar.classList.toggle("queued", Boolean(queued));
    ui.bar.setAttribute("aria-valuenow", String(value));
    ui.fill.style.width = queued ? "" : `${value}%`;
  }

  function fail(message, type) {
    ui.error.textContent = type ? `${message} (${type})` : message;
    ui.error.hidden = false;
    ui.status.textContent = "Failed.";
    finish();
  }

  function finish() {
    if (source) { source.abort(); source = null; }
    ui.button.disabled = false;
  }

  function show(state) {
    if (state.status === "queued") {
      const ahead = state.position;
      ui.status.textContent = ahead ? `Queued: ${ahead} job${ahead === 1 ? "" : "s"} ahead` : "Queued";
      setProgress(0, true);
    } else if (state.status === "running") {
      if (state.steps) {
        setProgress((100 * state.step) / state.steps, false);
        ui.status.textContent = `Step ${state.step} of ${state.steps}`;
      } else {
        setProgress(0, false);
        ui.status.textContent = "Loading the adapter...";
      }
    }
  }

  async function showImage(id) {
    const resp = await fetch(`${api}/jobs/${id}/result`, { headers: authHeaders() });
    if (!resp.ok) {
      const body = await errorOf(resp);
      fail(body.error || "the result could not be read", body.error_type);
      return;
    }
    const blob = await resp.blob();
    const wall = (performance.now() - started) / 1000;
    const compute = parseFloat(resp.headers.get("x-compute-time") || "0");
    const warm = resp.headers.get("x-adapter-warm") === "true";
    if (ui.image.src.startsWith("blob:")) URL.revokeObjectURL(ui.image.src);
    ui.image.src = URL.createObjectURL(blob);
    ui.meta.innerHTML = "";
    ui.meta.append(`Computed in ${compute.toFixed(2)} s (${wall.toFixed(2)} s in all) · adapter `);
    const tag = document.createElement("span");
    tag.className = warm ? "warm" : "cold";
    tag.textContent = warm ? "warm" : "cold (loaded for this job)";
    ui.meta.append(tag);
    ui.output.hidden = false;
    setProgress(100, false);
    ui.status.textContent = "Done.";
    finish();
  }

  // One state from the stream; true once it is terminal (the stream is then left).
  function onState(id, state) {
    show(state);
    if (!TERMINAL.has(state.status)) return false;
    source = null;
    if (state.status === "done") showImage(id);
    else if (state.status === "cancelled") fail("the job was cancelled", state.error_type);
    else fail(state.error || "the job failed", state.error_type);
    return true;
  }

  // Reads the job's Server-Sent Events; a dropped stream is opened again (it restarts from the
  // job's stored state), up to RECONNECTS times in a row.
  async function follow(id, attempt = 0) {
    const controller = new AbortController();
    source = controller;
    const again = (why) => {
      if (source !== controller) return; // finished or replaced meanwhile
      if (attempt >= RECONNECTS) fail(why);
      else setTimeout(() => { if (source === controller) follow(id, attempt + 1); }, 1000);
    };
    let resp;
    try {
      resp = await fetch(`${api}/jobs/${id}/events`, {
        headers: { Accept: "text/event-stream", ...authHeaders() },
        signal: controller.signal,
      });
    } catch (err) {
      again(`the router cannot be reached (${err})`);
      return;
    }
    if (!resp.ok) {
      const body = await errorOf(resp);
      fail(body.error || resp.statusText, body.error_type);
      return;
    }
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value.replace(/\r\n?/g, "\n");
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const data = buffer.slice(0, cut).split("\n")
            .filter((line) => line.startsWith("data:"))
            .map((line) => line.slice(5).replace(/^ /, ""))
            .join("\n");
          buffer = buffer.slice(cut + 2);
          if (data && onState(id, JSON.parse(data))) {
            controller.abort();
            return;
          }
        }
      }
    } catch (err) {
      if (controller.signal.aborted) return;
    }
    again("the event stream closed");
  }

  async function compute(event) {
    event.preventDefault();
    finish();
    ui.error.hidden = true;
    ui.output.hidden = true;
    ui.button.disabled = true;
    setProgress(0, true);
    ui.status.textContent = "Submitting...";
    const parameters = {};
    if (ui.negative.value.trim()) parameters.negative_prompt = ui.negative.value;
    if (ui.steps.value) parameters.num_inference_steps = parseInt(ui.steps.value, 10);
    if (ui.seed.value !== "") parameters.seed = parseInt(ui.seed.value, 10);
    started = performance.now();
    let resp;
    let body;
    try {
      resp = await fetch(`${api}/jobs`, {
        method: "POST",
        headers: { "Content-Type": "application/json", ...authHeaders() },
        body: JSON.stringify({ model, inputs: ui.prompt.value, parameters }),
      });
      body = resp.status === 202 ? await resp.json() : await errorOf(resp);
    } catch (err) {
      fail(`the router cannot be reached (${err})`);
      return;
    }
    if (resp.status !== 202) {
      fail(body.error || resp.statusText, body.error_type);
      return;
    }
    if (ui.key.value.trim()) sessionStorage.setItem(KEY_STORE, ui.key.value.trim());
    if (!("family" in root.dataset)) fitFamily(); // unknown when the page opened (say, no key yet)
    ui.job.textContent = `job ${body.id}`;
    show(body);
    follow(body.id);
  }

  // A family that takes no negative prompt (FLUX.1) gets the field disabled, saying why. Unknown
  // (no live worker yet, an API key needed, the Hub down): the field stays, the API answers for it.
  async function fitFamily() {
    const resp = await fetch(`${api}/models/${model}`, { headers: authHeaders() }).catch(() => null);
    if (!resp || !resp.ok) return;
    const info = await resp.json();
    root.dataset.family = info.family || "";
    if (info.negative_prompt) return;
    ui.negative.value = "";
    ui.negative.disabled = true;
    ui.negative.placeholder = `not taken by ${info.family || "this model"}`;
    ui.negative.title = info.negative_prompt_refused;
  }

  ui.form.addEventListener("submit", compute);
  fitFamily();
})();
