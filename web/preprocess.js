// Preprocessing that matches pneumocnn.data.images.load_image pixel for pixel: grayscale with Pillow's
// integer luma, then Pillow's bilinear resize (Resample.c: a triangle filter widened by the
// downscaling factor, 22-bit fixed-point coefficients, two passes in Pillow 13's order, each
// rounded to 8 bits). Canvas drawImage resizing is not used: it samples differently and moves
// probabilities enough to change labels near the threshold.

import { decodeSixteenBitGray } from "./png16.js";

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

// Pillow's resampling filters (Resample.c): the kernel and its support at scale 1.
const BILINEAR = { support: 1, kernel: (x) => (Math.abs(x) < 1 ? 1 - Math.abs(x) : 0) };
const BOX = { support: 0.5, kernel: (x) => (x > -0.5 && x <= 0.5 ? 1 : 0) };

function coefficients(inSize, outSize, filter) {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = filter.support * filterScale;
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
      const w = filter.kernel((x + xmin - center + 0.5) * inverse);
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
  return resample(gray, width, height, outWidth, outHeight, BILINEAR);
}

/** Pillow's Image.resize((outWidth, outHeight), BOX) of an 8-bit grayscale image. */
export function resizeBox(gray, width, height, outWidth, outHeight) {
  return resample(gray, width, height, outWidth, outHeight, BOX);
}

function horizontalPass(current, width, height, outWidth, filter) {
  const { bounds, weights, kernelSize } = coefficients(width, outWidth, filter);
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
  return out;
}

function verticalPass(current, width, height, outHeight, filter) {
  const { bounds, weights, kernelSize } = coefficients(height, outHeight, filter);
  const out = new Uint8Array(width * outHeight);
  for (let yy = 0; yy < outHeight; yy += 1) {
    const ymin = bounds[yy * 2];
    const ymax = bounds[yy * 2 + 1];
    for (let x = 0; x < width; x += 1) {
      let sum = 2 ** (PRECISION_BITS - 1);
      for (let y = 0; y < ymax; y += 1) {
        sum += current[(ymin + y) * width + x] * weights[yy * kernelSize + y];
      }
      out[yy * width + x] = clip8(sum);
    }
  }
  return out;
}

function resample(gray, width, height, outWidth, outHeight, filter) {
  // Pillow 13's order of the two passes (Resample.c): vertical first when the height shrinks
  // by more than twice as many pixels as the width; horizontal first otherwise. Each pass rounds
  // to 8 bits, so the order moves some pixels by a grey level.
  const verticalFirst = height - outHeight > 0 && height - outHeight > (width - outWidth) * 2;
  if (verticalFirst) {
    const tall = outHeight !== height ? verticalPass(gray, width, height, outHeight, filter) : gray;
    return outWidth !== width ? horizontalPass(tall, width, outHeight, outWidth, filter) : tall;
  }
  const wide = outWidth !== width ? horizontalPass(gray, width, height, outWidth, filter) : gray;
  return outHeight !== height ? verticalPass(wide, outWidth, height, outHeight, filter) : wide;
}

/** True for a 16-bit grayscale PNG (its IHDR says so): pneumocnn stretches those. */
export function isSixteenBitPng(bytes) {
  const signature = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  const header = bytes.length > 25 && signature.every((value, i) => bytes[i] === value);
  return header && bytes[24] === 16 && bytes[25] === 0;
}

// Bytes per decoded pixel as Pillow stores each kind of image (pneumocnn.data.pixels.
// pillow_bytes_per_pixel): one for 8-bit gray and palette, two for 16-bit gray, four otherwise.
const GRAY8 = 1;
const GRAY16 = 2;
const WIDE = 4;

function pngHeader(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const depth = bytes[24];
  const colour = bytes[25];
  const perPixel = colour === 3 || (colour === 0 && depth <= 8) ? GRAY8 : colour === 0 ? GRAY16 : WIDE;
  return { format: "PNG", width: view.getUint32(16), height: view.getUint32(20), perPixel };
}

async function jpegHeader(file) {
  // Walks the marker segments up to the frame header (SOFn), reading a few bytes at a time: the
  // EXIF and ICC segments before it can be long, and nothing else needs reading.
  let offset = 2;
  while (offset + 4 <= file.size) {
    const head = new Uint8Array(await file.slice(offset, offset + 10).arrayBuffer());
    if (head[0] !== 0xff) break;
    const marker = head[1];
    if (marker === 0xff) {
      offset += 1; // fill byte
      continue;
    }
    const length = (head[2] << 8) | head[3];
    const frame = marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker);
    if (frame && head.length >= 10) {
      const height = (head[5] << 8) | head[6];
      const width = (head[7] << 8) | head[8];
      return { format: "JPEG", width, height, perPixel: head[9] === 1 ? GRAY8 : WIDE };
    }
    if (marker === 0xd9 || marker === 0xda || length < 2) break;
    offset += 2 + length;
  }
  throw new Error("a JPEG without a readable frame header");
}

function webpHeader(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const chunk = String.fromCharCode(...bytes.slice(12, 16));
  if (chunk === "VP8X") {
    const width = 1 + (view.getUint32(24, true) & 0xffffff);
    const height = 1 + (view.getUint32(27, true) & 0xffffff);
    return { format: "WebP", width, height, perPixel: WIDE };
  }
  if (chunk === "VP8L") {
    const bits = view.getUint32(21, true);
    return { format: "WebP", width: 1 + (bits & 0x3fff), height: 1 + ((bits >> 14) & 0x3fff), perPixel: WIDE };
  }
  const width = view.getUint16(26, true) & 0x3fff;
  const height = view.getUint16(28, true) & 0x3fff;
  return { format: "WebP", width, height, perPixel: WIDE };
}

/**
 * The size an image file declares in its header, read before anything is decoded:
 * {format, width, height, perPixel}. Throws for a file that is not a PNG, JPEG, GIF, BMP or
 * WebP image.
 */
export async function declaredSize(file) {
  const bytes = new Uint8Array(await file.slice(0, 32).arrayBuffer());
  const view = new DataView(bytes.buffer);
  const text = (start, end) => String.fromCharCode(...bytes.slice(start, end));
  if (bytes.length >= 26 && text(1, 4) === "PNG" && text(12, 16) === "IHDR") return pngHeader(bytes);
  if (bytes[0] === 0xff && bytes[1] === 0xd8) return jpegHeader(file);
  if (bytes.length >= 10 && text(0, 4) === "GIF8") {
    return { format: "GIF", width: view.getUint16(6, true), height: view.getUint16(8, true), perPixel: GRAY8 };
  }
  if (bytes.length >= 30 && text(0, 2) === "BM") {
    const perPixel = view.getUint16(28, true) <= 8 ? GRAY8 : WIDE;
    const width = Math.abs(view.getInt32(18, true));
    return { format: "BMP", width, height: Math.abs(view.getInt32(22, true)), perPixel };
  }
  if (bytes.length >= 30 && text(0, 4) === "RIFF" && text(8, 12) === "WEBP") return webpHeader(bytes);
  throw new Error("not a JPEG, PNG, GIF, BMP or WebP image");
}

/**
 * Refuses an image whose declared size is past the decode budget, before the browser decodes
 * it (pneumocnn.data.pixels.check_budget, same limit and rule): a 12000 x 12000 PNG would take
 * gigabytes across the browser's processes.
 */
export function checkBudget(name, header, maxBytes) {
  const { width, height, perPixel } = header;
  if (Math.min(width, height) < 1) {
    throw new Error(`${name}: the ${header.format} header claims ${width}x${height} px, which is not an image`);
  }
  const bytes = width * height * perPixel;
  if (bytes > maxBytes) {
    const number = (value) => value.toLocaleString("en-US");
    throw new Error(
      `Image '${name}' is ${width}x${height} px at ${perPixel} bytes per pixel: ${number(bytes)} ` +
        `bytes decoded, above the limit of ${number(maxBytes)} (a decompression bomb, or not an ` +
        "X-ray). Resize it before use; it was not decoded.",
    );
  }
}

/**
 * A film as the model's input: its declared size checked against the decode budget, decoded by
 * the browser (EXIF orientation applied, no colour management), grayscale, resized to size x
 * size (a 16-bit grayscale PNG is decoded and stretched by png16.js). Returns {input, width,
 * height, gray (full size), rgba (null for a 16-bit film: no colour), bitmap}.
 */
export async function loadFilm(file, size, maxBytes) {
  checkBudget(file.name, await declaredSize(file), maxBytes);
  const bytes = new Uint8Array(await file.slice(0, 32).arrayBuffer());
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, {
      imageOrientation: "from-image",
      colorSpaceConversion: "none",
      premultiplyAlpha: "none",
    });
  } catch (error) {
    throw new Error(`not a readable image (${error.message}); expected a JPEG or PNG chest X-ray`);
  }
  if (isSixteenBitPng(bytes)) {
    // Decoded here from its 16-bit values (the browser keeps 8); gray, so no colour.
    const film = await decodeSixteenBitGray(new Uint8Array(await file.arrayBuffer()));
    if (film) {
      const input = toModelInput(film.gray, film.width, film.height, size);
      return { ...film, input, rgba: null, bitmap };
    }
  }
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const context = canvas.getContext("2d", { willReadFrequently: true });
  context.drawImage(bitmap, 0, 0);
  const { data } = context.getImageData(0, 0, bitmap.width, bitmap.height);
  let gray = luma(data, bitmap.width, bitmap.height);
  if (isSixteenBitPng(bytes)) gray = stretch(gray); // one this page does not decode itself
  const input = toModelInput(gray, bitmap.width, bitmap.height, size);
  return { input, width: bitmap.width, height: bitmap.height, gray, rgba: data, bitmap };
}

// The data set's films' size (pneumocnn.core.metadata.FILM_SIZE): a film is brought to it first,
// then to the model's side, as pneumocnn.data.images.to_model_input does.
export const FILM_SIZE = 224;

/** The model's input from a full-size gray film, in to_model_input's two bilinear steps. */
export function toModelInput(gray, width, height, size) {
  if (size < FILM_SIZE && (width !== FILM_SIZE || height !== FILM_SIZE)) {
    gray = resizeBilinear(gray, width, height, FILM_SIZE, FILM_SIZE);
    [width, height] = [FILM_SIZE, FILM_SIZE];
  }
  return resizeBilinear(gray, width, height, size, size);
}
