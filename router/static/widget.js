// lorafarm widget: submit through the async job API, follow its Server-Sent Events, show the image.
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
  };
  const TERMINAL = new Set(["done", "failed", "cancelled"]);
  let source = null;
  let started = 0;

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
    if (source) { source.close(); source = null; }
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
    const resp = await fetch(`${api}/jobs/${id}/result`);
    if (!resp.ok) {
      const body = await resp.json().catch(() => ({ error: resp.statusText }));
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

  function follow(id) {
    source = new EventSource(`${api}/jobs/${id}/events`);
    source.onmessage = (event) => {
      const state = JSON.parse(event.data);
      show(state);
      if (!TERMINAL.has(state.status)) return;
      source.close();
      source = null;
      if (state.status === "done") showImage(id);
      else if (state.status === "cancelled") fail("the job was cancelled", state.error_type);
      else fail(state.error || "the job failed", state.error_type);
    };
    // An EventSource reconnects by itself (the stream starts again from the job's stored state).
    source.onerror = () => {
      if (source && source.readyState === EventSource.CLOSED) fail("the event stream closed");
    };
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
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ model, inputs: ui.prompt.value, parameters }),
      });
      body = await resp.json();
    } catch (err) {
      fail(`the router cannot be reached (${err})`);
      return;
    }
    if (resp.status !== 202) {
      fail(body.error || resp.statusText, body.error_type);
      return;
    }
    ui.job.textContent = `job ${body.id}`;
    show(body);
    follow(body.id);
  }

  ui.form.addEventListener("submit", compute);
})();
