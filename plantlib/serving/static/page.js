// The try-it page: reads GET /model, sends each picked or dropped image to POST /predict (one request per image,
// which the server batches), and shows the prediction, probability bars and heat map, or the server's message.
"use strict";

let modelInfo = null;

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

async function showModel() {
  const line = document.getElementById("model-line");
  for (let attempt = 0; attempt < 120; attempt++) {
    const response = await fetch("/model").catch(() => null);
    if (response && response.ok) {
      modelInfo = await response.json();
      const version = modelInfo.version ? ` · version ${modelInfo.version}` : "";
      line.textContent = `Model ${modelInfo.name}${version} · ${modelInfo.kind} on ${modelInfo.engine} · ` +
        `classes: ${modelInfo.class_names.join(", ")}`;
      document.getElementById("explain").disabled = !modelInfo.explains;
      document.getElementById("explain").checked = modelInfo.explains;
      showMetrics(modelInfo.headline_metrics);
      return;
    }
    line.textContent = "the model is loading…";
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  line.textContent = "the model did not load; see the server's output";
}

function showMetrics(rows) {
  const body = document.querySelector("#metrics-table tbody");
  body.replaceChildren();
  if (!rows.length) {
    body.append(element("tr", "", "no test metrics recorded for this model"));
    return;
  }
  for (const row of rows) {
    const tr = element("tr");
    tr.append(element("td", "", row.name), element("td", "", row.text), element("td", "muted", `n = ${row.n}`));
    body.append(tr);
  }
}

function bars(probabilities) {
  const holder = element("div");
  const ranked = Object.entries(probabilities).sort((a, b) => b[1] - a[1]);
  for (const [name, p] of ranked) {
    const bar = element("div", "bar");
    const track = element("div", "track");
    const fill = element("div", "fill");
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    track.append(fill);
    bar.append(element("span", "name", name), track, element("span", "value", p.toFixed(3)));
    holder.append(bar);
  }
  return holder;
}

async function predict(file) {
  const card = document.getElementById("card").content.firstElementChild.cloneNode(true);
  card.querySelector(".file").textContent = file.name;
  card.querySelector(".verdict").textContent = "predicting…";
  const thumb = card.querySelector(".thumb");
  thumb.addEventListener("error", () => { thumb.hidden = true; });  // not a picture the browser can show
  thumb.src = URL.createObjectURL(file);
  document.getElementById("results").prepend(card);
  const explain = document.getElementById("explain").checked && modelInfo && modelInfo.explains;
  const tta = document.getElementById("tta").checked;
  const form = new FormData();
  form.append("files", file, file.name);
  try {
    const response = await fetch(`/predict?explain=${explain}&tta=${tta}`, { method: "POST", body: form });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || `the server answered ${response.status}`);
    showPrediction(card, answer.predictions[0]);
  } catch (error) {
    card.classList.add("failed");
    card.querySelector(".verdict").textContent = "no prediction";
    const message = card.querySelector(".error");
    message.textContent = error.message;
    message.hidden = false;
  }
}

function showPrediction(card, result) {
  card.querySelector(".verdict").textContent =
    `${result.predicted} (p = ${result.confidence.toFixed(2)})`;
  card.querySelector(".bars").replaceChildren(bars(result.probabilities));
  if (result.overlay_png) {
    const overlay = card.querySelector(".overlay");
    overlay.src = result.overlay_png;
    overlay.hidden = false;
  }
}

function handle(files) {
  for (const file of files) predict(file);
}

function wireDropZone() {
  const drop = document.getElementById("drop");
  const pick = document.getElementById("pick");
  pick.addEventListener("change", () => { handle(pick.files); pick.value = ""; });
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    handle(event.dataTransfer.files);
  });
}

wireDropZone();
showModel();
