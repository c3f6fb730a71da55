// The web view's only script (served from /static/, as the Content-Security-Policy requires).
// Pages read without it; with it, an open run's page follows the run: progress, status and
// the latest value of each metric, polled once a second until the run ends.
"use strict";

function shortValue(value) {
  if (typeof value === "number") {
    return Number.isInteger(value) ? String(value) : value.toPrecision(4).replace(/\.?0+(e|$)/, "$1");
  }
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text.length > 40 ? text.slice(0, 39) + "…" : text;
}

function cell(text, numeric) {
  const td = document.createElement("td");
  td.textContent = text;
  if (numeric) td.className = "num";
  return td;
}

function showLive(section, data) {
  const progress = document.getElementById("live-progress");
  if (data.cells_total) {
    progress.replaceChildren();
    const bar = document.createElement("progress");
    bar.max = data.cells_total;
    bar.value = data.cells_done || 0;
    progress.append(bar, ` ${data.cells_done || 0}/${data.cells_total} cells`);
  }
  const status = document.getElementById("run-status");
  if (status && status.textContent !== data.status) {
    status.textContent = data.status;
    status.className = "run-status " + data.status;
  }
  const body = document.querySelector("#live-metrics tbody");
  for (const [name, latest] of Object.entries(data.metrics || {})) {
    let row = Array.from(body.rows).find((r) => r.dataset.metric === name);
    const shown = [shortValue(latest.value), latest.step === null || latest.step === undefined ? "" : String(latest.step)];
    if (!row) {
      row = document.createElement("tr");
      row.dataset.metric = name;
      row.append(cell(name, false), cell("", true), cell("", true));
      body.append(row);
    }
    if (row.cells[1].textContent !== shown[0] || row.cells[2].textContent !== shown[1]) {
      row.cells[1].textContent = shown[0];
      row.cells[2].textContent = shown[1];
      row.classList.add("changed");
      setTimeout(() => row.classList.remove("changed"), 600);
    }
  }
  section.dataset.updates = String(Number(section.dataset.updates || 0) + 1);
}

function followRun(section) {
  const url = `/runs/${section.dataset.run}/live`;
  const poll = async () => {
    try {
      const response = await fetch(url, { headers: { accept: "application/json" }, cache: "no-store" });
      if (!response.ok) return setTimeout(poll, 3000);
      const data = await response.json();
      showLive(section, data);
      if (!data.open) {
        window.location.reload(); // the final metrics, files and error, as the database holds them
        return;
      }
    } catch (error) {
      return setTimeout(poll, 3000); // the server restarting: try again shortly
    }
    setTimeout(poll, 1000);
  };
  poll();
}

document.addEventListener("DOMContentLoaded", () => {
  const live = document.getElementById("live");
  if (live) followRun(live);
  // Filters apply as soon as a choice changes (the Filter button does the same without scripts).
  const filters = document.getElementById("filters");
  if (filters) {
    for (const select of filters.querySelectorAll("select, input[type=checkbox]")) {
      select.addEventListener("change", () => filters.requestSubmit());
    }
  }
});
