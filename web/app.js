// The pneumocnn page: runs the exported int8 model on this device with LiteRT.js (WebAssembly).
// The film is decoded, preprocessed and classified in the browser; nothing is uploaded.
// Everything the decision depends on (image size, classes, threshold, quantization, version,
// warning, the input guard's calibration) comes from the model's metadata file named in
// site.json, never from this code; the guard's default limits and the decode budget come from
// site.json, written from pneumocnn's own constants.

import { loadAndCompile, loadLiteRt, Tensor } from "@litertjs/core";
import { calibrationOf, judge, REFUSED } from "./input_guard.js";
import { loadFilm } from "./preprocess.js";

const status = document.getElementById("status");
const results = document.getElementById("results");
const picker = document.getElementById("files");
const dropZone = document.getElementById("drop");

function fail(message) {
  status.textContent = message;
  status.className = "error";
  document.body.dataset.state = "error";
  throw new Error(message);
}

async function fetchJson(url) {
  const response = await fetch(url);
  if (!response.ok) fail(`Cannot load ${url} (HTTP ${response.status}). Rebuild the site.`);
  return response.json();
}

/** The label by pneumocnn.core.task.decide: positive when P(pneumonia) >= threshold. */
function decide(outputs, metadata) {
  const names = metadata.class_names;
  const values = Array.from(outputs, (value) => Math.min(Math.max(value, 0), 1));
  if (values.length === 1) {
    const probability = values[0];
    const label = names[probability >= metadata.threshold ? 1 : 0];
    return { label, probability, perClass: { [names[0]]: 1 - probability, [names[1]]: probability } };
  }
  const probability = 1 - values[0];
  let label = names[0];
  if (probability >= metadata.threshold) {
    let best = 1;
    for (let i = 2; i < values.length; i += 1) if (values[i] > values[best]) best = i;
    label = names[best];
  }
  const perClass = Object.fromEntries(names.map((name, i) => [name, values[i]]));
  return { label, probability, perClass };
}

function checkContract(model, metadata, modelFile) {
  const tensors = metadata.tensors?.[modelFile];
  if (!tensors) fail(`The metadata has no tensor description for ${modelFile}. Re-export the model.`);
  const input = model.getInputDetails()[0];
  const expected = [1, metadata.image_size, metadata.image_size, metadata.channels];
  if (Array.from(input.shape).join() !== expected.join()) {
    fail(
      `The model's input is [${Array.from(input.shape)}], expected [${expected}] (a fixed batch of 1). ` +
        "Re-export it with python -m pneumocnn.export.",
    );
  }
  return tensors;
}

function dequantize(values, description) {
  if (!description.scale) return Float32Array.from(values);
  return Float32Array.from(values, (value) => (value - description.zero_point) * description.scale);
}

async function sha256(bytes) {
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

function thumbnail(bitmap) {
  const scale = Math.min(1, 220 / Math.max(bitmap.width, bitmap.height));
  const canvas = document.createElement("canvas");
  canvas.width = Math.round(bitmap.width * scale);
  canvas.height = Math.round(bitmap.height * scale);
  canvas.getContext("2d").drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  return canvas;
}

function card(file) {
  const article = document.createElement("article");
  article.className = "result";
  article.dataset.file = file.name;
  results.prepend(article);
  return article;
}

function guardNote(verdict) {
  const note = document.createElement("p");
  note.className = `guard ${verdict.status}`;
  const score = verdict.score === null ? "" : ` (OOD score ${verdict.score.toFixed(2)})`;
  note.textContent =
    verdict.status === "ok"
      ? `Input guard: like the training films${score}.`
      : `Input guard: ${verdict.status}: ${verdict.reasons.join("; ")}`;
  return note;
}

function guardData(verdict) {
  return {
    verdict: verdict.status,
    reason: verdict.reasons.join("; "),
    oodScore: verdict.score === null ? "" : String(verdict.score),
  };
}

/** A refused film is not classified (as in pneumocnn.predict): the card says why. */
function showRefused(article, file, film, verdict, inputSha) {
  const text = document.createElement("div");
  text.className = "text";
  const name = document.createElement("h3");
  name.textContent = "Not classified";
  name.className = "refused";
  const file_ = document.createElement("p");
  file_.className = "file";
  file_.textContent = `${file.name} (${film.width} x ${film.height} px)`;
  text.append(name, file_, guardNote(verdict));
  article.append(thumbnail(film.bitmap), text);
  Object.assign(article.dataset, { label: "", ...guardData(verdict), inputSha256: inputSha });
}

function showResult(article, file, film, decision, timing, metadata, inputSha, verdict) {
  const positive = metadata.positive_class;
  const bar = document.createElement("div");
  bar.className = "bar";
  bar.innerHTML = `<span class="fill"></span><span class="threshold" title="threshold"></span>`;
  bar.querySelector(".fill").style.width = `${(decision.probability * 100).toFixed(1)}%`;
  bar.querySelector(".threshold").style.left = `${(metadata.threshold * 100).toFixed(1)}%`;
  const text = document.createElement("div");
  text.className = "text";
  const name = document.createElement("h3");
  name.textContent = decision.label;
  name.className = decision.label === metadata.class_names[0] ? "normal" : "positive";
  const file_ = document.createElement("p");
  file_.className = "file";
  file_.textContent = `${file.name} (${film.width} x ${film.height} px)`;
  const numbers = document.createElement("p");
  const side = decision.probability >= metadata.threshold ? ">=" : "<";
  numbers.textContent =
    `P(${positive}) = ${decision.probability.toFixed(4)} ${side} threshold ` +
    `${metadata.threshold.toFixed(4)}`;
  const classes = document.createElement("p");
  classes.className = "classes";
  if (metadata.class_names.length > 2) {
    classes.textContent = Object.entries(decision.perClass)
      .map(([label, value]) => `P(${label}) ${value.toFixed(3)}`)
      .join(", ");
  }
  const time = document.createElement("p");
  time.className = "time";
  time.textContent =
    `${timing.total.toFixed(1)} ms on this device (decode and resize ` +
    `${timing.preprocess.toFixed(1)} ms, model ${timing.model.toFixed(1)} ms)`;
  text.append(name, file_, numbers, bar, classes, guardNote(verdict), time);
  article.append(thumbnail(film.bitmap), text);
  Object.assign(article.dataset, {
    ...guardData(verdict),
    label: decision.label,
    probability: String(decision.probability),
    totalMs: String(timing.total),
    modelMs: String(timing.model),
    inputSha256: inputSha,
  });
}

async function classify(model, metadata, tensors, site, calibration, file) {
  const article = card(file);
  try {
    const start = performance.now();
    const size = metadata.image_size;
    const film = await loadFilm(file, size, site.max_decoded_bytes);
    const verdict = judge(film, calibration, site.guard_limits, size);
    if (verdict.status === REFUSED) {
      showRefused(article, file, film, verdict, await sha256(film.input));
      film.bitmap.close();
      return;
    }
    const ready = performance.now();
    // The int8 model takes the uint8 pixels as they are; a float model the same values as float32.
    const pixels = tensors.input.dtype === "float32" ? Float32Array.from(film.input) : film.input;
    const input = new Tensor(pixels, [1, size, size, metadata.channels]);
    const outputs = await model.run(input);
    input.delete();
    const raw = outputs[0].toTypedArray().slice();
    outputs.forEach((tensor) => tensor.delete());
    const end = performance.now();
    const decision = decide(dequantize(raw, tensors.output), metadata);
    const timing = { total: end - start, preprocess: ready - start, model: end - ready };
    const inputSha = await sha256(film.input);
    showResult(article, file, film, decision, timing, metadata, inputSha, verdict);
    film.bitmap.close();
  } catch (error) {
    article.classList.add("failed");
    article.dataset.error = String(error);
    article.textContent = `${file.name}: not classified: ${error.message ?? error}`;
  }
}

async function main() {
  const site = await fetchJson("site.json");
  const metadata = await fetchJson(site.metadata);
  const modelFile = site.model.split("/").pop();
  document.getElementById("title").textContent = `${metadata.class_names.join(" or ")}?`;
  document.getElementById("warning").textContent = metadata.warning;
  document.getElementById("model").textContent =
    `${metadata.name} ${metadata.package_version} (exported ${metadata.created}), ` +
    `${modelFile}; threshold ${metadata.threshold.toFixed(4)} on P(${metadata.positive_class}) ` +
    `(${metadata.threshold_rule}); ${metadata.image_size} x ${metadata.image_size} px input; ` +
    `LiteRT.js ${site.litert.version}.`;
  status.textContent = "Loading the model...";
  await loadLiteRt(site.litert.wasm);
  const model = await loadAndCompile(site.model, { accelerator: "wasm" });
  const tensors = checkContract(model, metadata, modelFile);
  const calibration = calibrationOf(metadata.guard);
  status.textContent = "Ready. Choose or drop chest X-ray films (JPEG or PNG).";
  document.body.dataset.state = "ready";
  picker.disabled = false;

  let queue = Promise.resolve();
  const run = (files) => {
    for (const file of files) queue = queue.then(() => classify(model, metadata, tensors, site, calibration, file));
    queue = queue.then(() => {
      document.body.dataset.done = String(results.querySelectorAll(".result").length);
    });
  };
  picker.addEventListener("change", () => run(Array.from(picker.files)));
  dropZone.addEventListener("dragover", (event) => event.preventDefault());
  dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    run(Array.from(event.dataTransfer.files));
  });
}

main().catch((error) => {
  if (document.body.dataset.state !== "error") {
    status.textContent = `The model could not be loaded: ${error}`;
    status.className = "error";
    document.body.dataset.state = "error";
  }
});
