// The input guard of pneumocnn.runtime.guard, in the browser: the same refusal checks, the same
// out-of-distribution score from the calibration in the model's metadata ("guard"), the same
// reasons word for word. Pixel arithmetic follows Pillow where Python uses it (Image.reduce for
// the spread and the colourfulness, the BOX resize for the thumbnail), so on the same decoded
// pixels the page and `pneumocnn.predict` give the same verdict.

import { resizeBox } from "./preprocess.js";

export const OK = "ok";
export const FLAGGED = "flagged";
export const REFUSED = "refused";

/**
 * Pillow's Image.reduce(factor) of one 8-bit band (Reduce.c): the mean of each factor x factor
 * block, partial blocks at the right and bottom edges averaged over what they hold, rounded
 * with Pillow's fixed-point multiplier.
 */
export function reduce(band, width, height, factor) {
  if (factor <= 1) return { pixels: band, width, height };
  const outWidth = Math.ceil(width / factor);
  const outHeight = Math.ceil(height / factor);
  const out = new Uint8Array(outWidth * outHeight);
  for (let y = 0; y < outHeight; y += 1) {
    const top = y * factor;
    const bottom = Math.min(top + factor, height);
    for (let x = 0; x < outWidth; x += 1) {
      const left = x * factor;
      const right = Math.min(left + factor, width);
      const count = (right - left) * (bottom - top);
      let sum = Math.floor(count / 2);
      for (let yy = top; yy < bottom; yy += 1) {
        const row = yy * width;
        for (let xx = left; xx < right; xx += 1) sum += band[row + xx];
      }
      out[y * outWidth + x] = Math.floor((sum * multiplier(count)) / 2 ** 24);
    }
  }
  return { pixels: out, width: outWidth, height: outHeight };
}

/** Reduce.c's division_UINT32(count, 8): 2^32 / (256 count) in float32, truncated. */
function multiplier(count) {
  return Math.trunc(Math.fround(2 ** 32 / Math.fround(256 * count)));
}

/** The reduction factor Python uses for a cheap copy of a large image: about 256 px a side. */
function factorOf(width, height) {
  return Math.max(1, Math.floor(Math.max(width, height) / 256));
}

function meanAndStd(values) {
  let total = 0;
  for (const value of values) total += value;
  const mean = total / values.length;
  let squares = 0;
  for (const value of values) squares += (value - mean) ** 2;
  return { mean, std: Math.sqrt(squares / values.length) };
}

/** The gray-level spread (standard deviation) the refusal checks, as Python measures it. */
export function spread(gray, width, height) {
  return meanAndStd(reduce(gray, width, height, factorOf(width, height)).pixels).std;
}

/**
 * Hasler and Suesstrunk's colourfulness of decoded RGBA pixels, as
 * pneumocnn.data.images.colourfulness measures it (on a copy reduced by Pillow to about 256 px
 * a side; alpha is ignored, as Pillow's RGB conversion drops it). 0 for a gray image.
 */
export function colourfulness(rgba, width, height) {
  const bands = [0, 1, 2].map((band) => {
    const values = new Uint8Array(width * height);
    for (let i = 0; i < values.length; i += 1) values[i] = rgba[i * 4 + band];
    return reduce(values, width, height, factorOf(width, height)).pixels;
  });
  const [red, green, blue] = bands;
  const rg = new Float64Array(red.length);
  const yb = new Float64Array(red.length);
  for (let i = 0; i < red.length; i += 1) {
    rg[i] = red[i] - green[i];
    yb[i] = 0.5 * (red[i] + green[i]) - blue[i];
  }
  const a = meanAndStd(rg);
  const b = meanAndStd(yb);
  return Math.hypot(a.std, b.std) + 0.3 * Math.hypot(a.mean, b.mean);
}

/** Python's f"{value:.{digits}f}": JavaScript's toFixed, but an exact tie rounds to even. */
export function fixed(value, digits) {
  const rounded = value.toFixed(digits);
  if (!Number.isFinite(value) || Math.abs(value) >= 1e21) return rounded;
  const exact = value.toFixed(100);
  const point = exact.indexOf(".");
  if (!/^50*$/.test(exact.slice(point + 1 + digits))) return rounded;
  const kept = exact.slice(0, digits ? point + 1 + digits : point);
  return Number(kept.at(-1)) % 2 === 0 ? kept : rounded;
}

/** Python's f"{value:g}" for the limits (six significant digits, no trailing zeros). */
function general(value) {
  return String(Number(Number(value).toPrecision(6)));
}

/**
 * The reasons to refuse an image outright (pneumocnn.runtime.guard.refusal), each naming the
 * measured value and the limit; an empty array: none.
 *
 * film: {width, height, gray (full-size luma), colourfulness}; limits: every limit, as the
 * metadata's guard.limits (or the defaults site.json carries) gives them.
 */
export function refusal(film, limits) {
  const { width, height } = film;
  const reasons = [];
  if (Math.min(width, height) < limits.min_side) {
    reasons.push(
      `too small (${width}x${height} px; a film has at least ${general(limits.min_side)} px a side)`,
    );
  }
  const ratio = Math.max(width, height) / Math.max(Math.min(width, height), 1);
  if (ratio > limits.max_aspect_ratio) {
    reasons.push(
      `extreme aspect ratio (${fixed(ratio, 1)}:1; a chest film is at most ` +
        `${general(limits.max_aspect_ratio)}:1)`,
    );
  }
  const std = spread(film.gray, width, height);
  if (std < limits.min_std) {
    reasons.push(
      `near-constant image (gray-level spread ${fixed(std, 1)}, below ${general(limits.min_std)}): ` +
        "blank, black or white",
    );
  }
  if (film.colourfulness > limits.max_colourfulness) {
    reasons.push(
      `strongly coloured (colourfulness ${fixed(film.colourfulness, 0)}, above ` +
        `${general(limits.max_colourfulness)}): a photograph, not an X-ray`,
    );
  }
  return reasons;
}

function decodeArray(entry) {
  if (Array.isArray(entry)) return Float64Array.from(entry);
  const binary = atob(entry.base64);
  const view = new DataView(new ArrayBuffer(binary.length));
  for (let i = 0; i < binary.length; i += 1) view.setUint8(i, binary.charCodeAt(i));
  const values = new Float64Array(binary.length / 4);
  for (let i = 0; i < values.length; i += 1) values[i] = view.getFloat32(i * 4, true);
  return values;
}

/** The metadata's "guard" entry (GuardCalibration.to_dict) made ready to score; null: none. */
export function calibrationOf(entry) {
  if (!entry) return null;
  const size = Number(entry.thumbnail_size);
  const variances = Float64Array.from(entry.variances);
  const mean = decodeArray(entry.mean);
  const components = decodeArray(entry.components);
  if (mean.length !== size * size || components.length !== variances.length * size * size) {
    throw new Error(
      `The metadata's input-guard calibration is malformed (mean ${mean.length} values, ` +
        `components ${components.length}, for a ${size}x${size} thumbnail and ` +
        `${variances.length} components). Re-export the model with python -m pneumocnn.export.`,
    );
  }
  return {
    size,
    mean,
    components,
    variances,
    residualVariance: Number(entry.residual_variance),
    threshold: Number(entry.distance_threshold),
    limits: entry.limits,
  };
}

/** The standardised thumbnail of a model input (pneumocnn.runtime.guard.thumbnails). */
export function thumbnail(input, side, size) {
  const small = resizeBox(input, side, side, size, size);
  const { mean, std } = meanAndStd(small);
  const scale = Math.max(std, 1);
  return Float64Array.from(small, (value) => (value - mean) / scale);
}

/** The out-of-distribution score of a model input: 1.0 at the validation films' quantile. */
export function score(calibration, input, side) {
  const { size, mean, components, variances } = calibration;
  const row = thumbnail(input, side, size);
  const dimension = size * size;
  let total = 0;
  for (let i = 0; i < dimension; i += 1) total += (row[i] - mean[i]) ** 2;
  let within = 0;
  let projectedTotal = 0;
  for (let k = 0; k < variances.length; k += 1) {
    let projected = 0;
    for (let i = 0; i < dimension; i += 1) {
      projected += (row[i] - mean[i]) * components[k * dimension + i];
    }
    projectedTotal += projected ** 2;
    within += projected ** 2 / variances[k];
  }
  const residual = Math.max(total - projectedTotal, 0);
  return Math.sqrt(within + residual / calibration.residualVariance) / calibration.threshold;
}

/**
 * The guard's verdict on one decoded film (pneumocnn.runtime.guard.judge): {status, reasons,
 * score}. A refused film is not to be classified; a flagged one is, with the reasons shown.
 *
 * film: {width, height, gray, rgba (the decoded pixels, for the colourfulness; null for a gray
 * film), input (the model input, imageSize square)};
 * calibration: from calibrationOf, or null for the refusal checks only; defaults: the limits
 * to use without a calibration.
 */
export function judge(film, calibration, defaults, imageSize) {
  const limits = { ...defaults, ...(calibration?.limits ?? {}) };
  const colour = film.rgba ? colourfulness(film.rgba, film.width, film.height) : 0;
  const reasons = refusal({ ...film, colourfulness: colour }, limits);
  if (reasons.length) return { status: REFUSED, reasons, score: null };
  const flags = [];
  if (Math.min(film.width, film.height) < imageSize) {
    flags.push(
      `low resolution (${film.width}x${film.height} px, upscaled to the model's ${imageSize} px)`,
    );
  }
  let value = null;
  if (calibration) {
    value = score(calibration, film.input, imageSize);
    if (value > 1) flags.push(`unlike the training films (OOD score ${fixed(value, 2)} > 1)`);
  }
  return { status: flags.length ? FLAGGED : OK, reasons: flags, score: value };
}
