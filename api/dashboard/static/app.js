// Obliviate dashboard: follows the live streams (Server-Sent Events) and keeps the
// server-rendered page current. No build step; uPlot draws the curves.
"use strict";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())} ` +
    `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())} UTC`;
}

function words(text) { return String(text).replace(/_/g, " "); }

function announce(text) {
  const region = document.getElementById("live-status");
  if (region) region.textContent = text;
}

function liveIndicator(state, text) {
  const box = document.querySelector("[data-live-indicator]");
  if (!box) return;
  box.dataset.state = state;
  box.querySelector("[data-live-text]").textContent = text;
}

function follow(url, handlers) {
  const source = new EventSource(url, { withCredentials: true });
  source.onopen = () => liveIndicator("live", "Live: updates appear as they happen.");
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) liveIndicator("down", "Live updates stopped; reload the page.");
    else liveIndicator("down", "Reconnecting to live updates\u2026");
  };
  for (const [kind, handle] of Object.entries(handlers)) {
    source.addEventListener(kind, (message) => handle(JSON.parse(message.data), source));
  }
  return source;
}

function setBadge(badge, status) {
  badge.className = `badge status-${status}`;
  badge.textContent = words(status);
}

function setProgress(scope, job) {
  const bar = scope.querySelector('[data-field="progress"]');
  const text = scope.querySelector('[data-field="progress-text"]');
  const fraction = job.progress.fraction;
  if (bar) {
    bar.value = fraction == null ? 0 : fraction;
    bar.textContent = `${Math.round((fraction || 0) * 100)}%`;
  }
  if (text) {
    text.textContent = job.progress.total_steps
      ? `${job.progress.step} / ${job.progress.total_steps}` : String(job.progress.step);
  }
}

// ---------------------------------------------------------------- the job list

function jobList(table) {
  const body = table.tBodies[0];
  const statuses = table.dataset.statuses ? table.dataset.statuses.split(",") : [];
  const method = table.dataset.method;
  const firstPage = table.dataset.firstPage === "true";
  const matches = (job) =>
    (!statuses.length || statuses.includes(job.status)) && (!method || job.method === method);

  function addRow(job) {
    const row = document.getElementById("job-row").content.firstElementChild.cloneNode(true);
    row.dataset.jobId = job.id;
    const link = row.querySelector("a");
    link.href = `/jobs/${job.id}`;
    link.textContent = job.id;
    row.querySelector('[data-field="method"]').textContent = job.method;
    row.querySelector('[data-field="model"]').textContent = job.model;
    const created = row.querySelector('[data-field="created"]');
    created.dateTime = job.created_at;
    created.textContent = when(job.created_at);
    row.classList.add("fresh");
    const empty = body.querySelector("tr.empty");
    if (empty) empty.remove();
    body.prepend(row);
    return row;
  }

  follow(table.dataset.stream, {
    job(job) {
      let row = body.querySelector(`tr[data-job-id="${job.id}"]`);
      if (!row) {
        if (!firstPage || !matches(job)) return;
        row = addRow(job);
        announce(`New job ${job.id}, ${words(job.status)}.`);
      }
      const badge = row.querySelector('[data-field="status"]');
      if (badge.textContent !== words(job.status) && TERMINAL.has(job.status)) {
        announce(`Job ${job.id} ${words(job.status)}.`);
      }
      setBadge(badge, job.status);
      setProgress(row, job);
      const updated = row.querySelector('[data-field="updated"]');
      updated.dateTime = job.updated_at;
      updated.textContent = when(job.updated_at);
    },
  });
}

// ---------------------------------------------------------------- charts

const COLOURS = ["#0b3d91", "#cf222e", "#1a7f37", "#9a6700"];

class Chart {
  constructor(figure) {
    this.figure = figure;
    this.keys = figure.dataset.series.split(",");
    this.box = figure.querySelector(".plot");
    this.summary = figure.querySelector("[data-summary]");
    this.x = [];
    this.ys = this.keys.map(() => []);
    this.plot = null;
    this.pending = false;
  }

  add(step, values) {
    if (this.x.length && step <= this.x[this.x.length - 1]) {
      // A retry started the run over: its steps count from the beginning again.
      this.x = [];
      this.ys = this.keys.map(() => []);
    }
    this.x.push(step);
    this.keys.forEach((key, i) => {
      const value = values[key];
      this.ys[i].push(typeof value === "number" && isFinite(value) ? value : null);
    });
    this.schedule();
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.draw(); });
  }

  draw() {
    const present = this.keys.map((key, i) => this.ys[i].some((v) => v !== null));
    if (!present.some(Boolean) || typeof uPlot === "undefined") return;
    const data = [this.x, ...this.ys];
    if (!this.plot) {
      const width = Math.max(280, this.box.clientWidth || 380);
      this.plot = new uPlot({
        width,
        height: 220,
        scales: { x: { time: false } },
        axes: [{ label: "step" }, {}],
        series: [{ label: "step" }, ...this.keys.map((key, i) => ({
          label: key, stroke: COLOURS[i % COLOURS.length], width: 2, show: present[i],
          spanGaps: true, points: { show: this.x.length < 40 },
        }))],
      }, data, this.box);
      this.figure.dataset.points = "0";
      new ResizeObserver(() => {
        const w = Math.max(280, this.box.clientWidth);
        if (this.plot && Math.abs(this.plot.width - w) > 4) this.plot.setSize({ width: w, height: 220 });
      }).observe(this.box);
    } else {
      this.plot.setData(data);
    }
    this.figure.dataset.points = String(this.x.length);
    const last = this.x.length - 1;
    const shown = this.keys
      .map((key, i) => (this.ys[i][last] == null ? null : `${key} ${this.ys[i][last].toPrecision(4)}`))
      .filter(Boolean);
    this.summary.textContent = `${this.x.length} points; at step ${this.x[last]}: ${shown.join(", ")}.`;
  }
}

// ---------------------------------------------------------------- one job

function jobPage(box) {
  const charts = {};
  for (const figure of box.querySelectorAll("figure.chart")) {
    charts[figure.dataset.chart] = new Chart(figure);
  }
  const events = document.getElementById("events");
  const field = (name) => box.querySelector(`[data-field="${name}"]`);
  let status = box.dataset.status;
  let outcomeShown = TERMINAL.has(status);

  async function refreshOutcome() {
    const target = document.getElementById("outcome");
    const response = await fetch(target.dataset.outcome, { credentials: "same-origin" });
    if (response.ok) target.innerHTML = await response.text();
  }

  function addEvent(event) {
    const item = document.createElement("li");
    item.className = `level-${event.level}`;
    const time = document.createElement("time");
    time.dateTime = event.created_at;
    time.textContent = when(event.created_at).slice(11);
    item.append(time, document.createTextNode(event.message));
    events.append(item);
    const empty = box.querySelector("[data-events-empty]");
    if (empty) empty.remove();
    if (events.children.length > 500) events.firstElementChild.remove();
    events.scrollTop = events.scrollHeight;
  }

  follow(box.dataset.stream, {
    job(job) {
      setBadge(field("status"), job.status);
      setProgress(box, job);
      field("epoch").textContent = job.progress.epoch.toFixed(2);
      field("eta").textContent = job.estimated_finish ? when(job.estimated_finish) : "n/a";
      field("attempts").textContent = job.attempts;
      field("started").textContent = job.started_at ? when(job.started_at) : "not yet";
      field("finished").textContent = job.finished_at ? when(job.finished_at) : "not yet";
      const error = field("error");
      error.hidden = !job.error;
      error.textContent = job.error ? `${job.error.code}: ${job.error.message || ""}` : "";
      if (job.status !== status) {
        announce(`Job ${words(job.status)}.`);
        status = job.status;
        box.dataset.status = status;
      }
    },
    metric(metric) {
      charts.loss.add(metric.step, metric.values);
      charts.weights.add(metric.step, metric.values);
    },
    evaluation(point) {
      charts.evaluation.add(point.step, point.metrics || {});
    },
    event: addEvent,
    end(_data, source) {
      source.close();
      liveIndicator("ended", "The job has ended; this page is complete.");
      if (!outcomeShown) { outcomeShown = true; refreshOutcome(); }
    },
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const table = document.getElementById("jobs");
  if (table) jobList(table);
  const job = document.getElementById("job");
  if (job) jobPage(job);
});
