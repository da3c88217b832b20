// Preprocessing that matches pneumocnn.data.images.load_image pixel for pixel: grayscale with Pillow's
// integer luma, then Pillow's bilinear resize (Resample.c: a triangle filter widened by the
// downscaling factor, 22-bit fixed-point coefficients, horizontal pass then vertical pass, each
// rounded to 8 bits). Canvas drawImage resizing is not used: it samples differently and moves
// probabilities enough to change labels near the threshold.

const PRECISION_BITS = 32 - 8 - 2;

/** Pillow's "L" conversion of 8-bit RGBA pixels; transparency is flattened onto black first. */
export function luma(rgba, width, height) {
  const gray = new Uint8Array(width * height);
  for (let i = 0, j = 0; j < gray.length; i += 4, j += 1) {
    let r = rgba[i];
    let g = rgba[i + 1];
    let b = rgba[i + 2];
    const a = rgba[i + 3];
    if (a !== 255) {
      // Pillow's alpha_composite onto opaque black: x * a / 255, rounded as Pillow rounds.
      r = divide255(r * a);
      g = divide255(g * a);
      b = divide255(b * a);
    }
    gray[j] = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
  }
  return gray;
}

function divide255(value) {
  const shifted = value + 0x80;
  return ((shifted >> 8) + shifted) >> 8;
}

/** Stretches gray values from their own minimum to maximum (pneumocnn's 16-bit rule). */
export function stretch(gray) {
  let low = 255;
  let high = 0;
  for (const value of gray) {
    if (value < low) low = value;
    if (value > high) high = value;
  }
  const out = new Uint8Array(gray.length);
  if (high > low) {
    const scale = 255 / (high - low);
    for (let i = 0; i < gray.length; i += 1) out[i] = Math.round((gray[i] - low) * scale);
  }
  return out;
}

function bilinear(x) {
  const distance = Math.abs(x);
  return distance < 1 ? 1 - distance : 0;
}

function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = 1 * filterScale;
  const kernelSize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const weights = new Float64Array(outSize * kernelSize);
  for (let xx = 0; xx < outSize; xx += 1) {
    const center = (xx + 0.5) * scale;
    const inverse = 1 / filterScale;
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const xmax = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    let total = 0;
    const row = [];
    for (let x = 0; x < xmax; x += 1) {
      const w = bilinear((x + xmin - center + 0.5) * inverse);
      row.push(w);
      total += w;
    }
    for (let x = 0; x < xmax; x += 1) {
      const w = total !== 0 ? row[x] / total : row[x];
      // Pillow's normalize_coeffs_8bpc: round half away from zero to 22-bit fixed point.
      weights[xx * kernelSize + x] = Math.trunc(
        w < 0 ? -0.5 + w * (1 << PRECISION_BITS) : 0.5 + w * (1 << PRECISION_BITS),
      );
    }
    bounds[xx * 2] = xmin;
    bounds[xx * 2 + 1] = xmax;
  }
  return { bounds, weights, kernelSize };
}

function clip8(value) {
  if (value >= 2 ** (PRECISION_BITS + 8)) return 255;
  if (value <= 0) return 0;
  return Math.floor(value / 2 ** PRECISION_BITS);
}

/** Pillow's Image.resize((outWidth, outHeight), BILINEAR) of an 8-bit grayscale image. */
export function resizeBilinear(gray, width, height, outWidth, outHeight) {
  let current = gray;
  let currentWidth = width;
  if (outWidth !== width) {
    const { bounds, weights, kernelSize } = coefficients(width, outWidth);
    const out = new Uint8Array(outWidth * height);
    for (let y = 0; y < height; y += 1) {
      const rowStart = y * width;
      for (let xx = 0; xx < outWidth; xx += 1) {
        const xmin = bounds[xx * 2];
        const xmax = bounds[xx * 2 + 1];
        let sum = 2 ** (PRECISION_BITS - 1);
        for (let x = 0; x < xmax; x += 1) {
          sum += current[rowStart + xmin + x] * weights[xx * kernelSize + x];
        }
        out[y * outWidth + xx] = clip8(sum);
      }
    }
    current = out;
    currentWidth = outWidth;
  }
  if (outHeight !== height) {
    const { bounds, weights, kernelSize } = coefficients(height, outHeight);
    const out = new Uint8Array(currentWidth * outHeight);
    for (let yy = 0; yy < outHeight; yy += 1) {
      const ymin = bounds[yy * 2];
      const ymax = bounds[yy * 2 + 1];
      for (let x = 0; x < currentWidth; x += 1) {
        let sum = 2 ** (PRECISION_BITS - 1);
        for (let y = 0; y < ymax; y += 1) {
          sum += current[(ymin + y) * currentWidth + x] * weights[yy * kernelSize + y];
        }
        out[yy * currentWidth + x] = clip8(sum);
      }
    }
    current = out;
  }
  return current;
}

/** True for a 16-bit grayscale PNG (its IHDR says so): pneumocnn stretches those. */
export function isSixteenBitPng(bytes) {
  const signature = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  const header = bytes.length > 25 && signature.every((value, i) => bytes[i] === value);
  return header && bytes[24] === 16 && bytes[25] === 0;
}

/**
 * A film as the model's input: decoded by the browser (EXIF orientation applied, no colour
 * management), grayscale, resized to size x size. Returns {input, width, height, bitmap}.
 */
export async function loadFilm(file, size) {
  const bytes = new Uint8Array(await file.slice(0, 32).arrayBuffer());
  const bitmap = await createImageBitmap(file, {
    imageOrientation: "from-image",
    colorSpaceConversion: "none",
    premultiplyAlpha: "none",
  });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  const { data } = context.getImageData(0, 0, bitmap.width, bitmap.height);
  let gray = luma(data, bitmap.width, bitmap.height);
  if (isSixteenBitPng(bytes)) gray = stretch(gray);
  const input = resizeBilinear(gray, bitmap.width, bitmap.height, size, size);
  return { input, width: bitmap.width, height: bitmap.height, bitmap };
}
