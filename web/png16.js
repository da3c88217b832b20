// 16-bit grayscale PNGs, decoded here rather than by the browser: a canvas holds 8 bits a
// channel, so the browser's decode drops the low byte before anything can stretch it. Python
// (pneumocnn.data.images.to_grayscale) stretches the 16-bit values from their own minimum to
// maximum; this does the same on the same values, so the page's gray film is Python's.

const SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

function chunks(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const found = [];
  for (let offset = 8; offset + 12 <= bytes.length; ) {
    const length = view.getUint32(offset);
    const type = String.fromCharCode(...bytes.subarray(offset + 4, offset + 8));
    found.push({ type, data: bytes.subarray(offset + 8, offset + 8 + length) });
    offset += 12 + length;
    if (type === "IEND") break;
  }
  return found;
}

async function inflate(parts) {
  // The PNG's IDAT stream is zlib-wrapped deflate: the Compression Streams API's "deflate".
  const stream = new Blob(parts).stream().pipeThrough(new DecompressionStream("deflate"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

function paeth(a, b, c) {
  const p = a + b - c;
  const pa = Math.abs(p - a);
  const pb = Math.abs(p - b);
  const pc = Math.abs(p - c);
  if (pa <= pb && pa <= pc) return a;
  return pb <= pc ? b : c;
}

/** The PNG filters undone (two bytes a pixel): the raw 16-bit rows, big-endian. */
function unfilter(raw, width, height) {
  const stride = width * 2;
  const out = new Uint8Array(stride * height);
  for (let y = 0; y < height; y += 1) {
    const kind = raw[y * (stride + 1)];
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    const row = y * stride;
    for (let x = 0; x < stride; x += 1) {
      const left = x >= 2 ? out[row + x - 2] : 0;
      const up = y > 0 ? out[row - stride + x] : 0;
      const corner = x >= 2 && y > 0 ? out[row - stride + x - 2] : 0;
      const predictor = [0, left, up, (left + up) >> 1, paeth(left, up, corner)][kind];
      if (predictor === undefined) throw new Error(`PNG row filter ${kind} is not defined`);
      out[row + x] = (line[x] + predictor) & 0xff;
    }
  }
  return out;
}

/** numpy's rint: round half to even. */
function rint(value) {
  const rounded = Math.round(value);
  return Math.abs(value % 1) === 0.5 ? 2 * Math.round(value / 2) : rounded;
}

/**
 * A 16-bit grayscale PNG as 8-bit gray, stretched as pneumocnn stretches it: {gray, width,
 * height}; null for a PNG this does not decode (another kind, interlaced, or with an EXIF
 * orientation), which the browser then decodes.
 */
export async function decodeSixteenBitGray(bytes) {
  if (!SIGNATURE.every((value, i) => bytes[i] === value)) return null;
  const found = chunks(bytes);
  const header = found[0];
  if (!header || header.type !== "IHDR" || found.some((chunk) => chunk.type === "eXIf")) return null;
  const view = new DataView(header.data.buffer, header.data.byteOffset, header.data.byteLength);
  const width = view.getUint32(0);
  const height = view.getUint32(4);
  const [depth, colour, , , interlace] = header.data.subarray(8, 13);
  if (depth !== 16 || colour !== 0 || interlace !== 0) return null;
  const raw = await inflate(found.filter((chunk) => chunk.type === "IDAT").map((c) => c.data));
  if (raw.length < (width * 2 + 1) * height) throw new Error("a truncated 16-bit PNG");
  const rows = unfilter(raw, width, height);
  const values = new Uint16Array(width * height);
  let low = 65535;
  let high = 0;
  for (let i = 0; i < values.length; i += 1) {
    const value = (rows[i * 2] << 8) | rows[i * 2 + 1];
    values[i] = value;
    if (value < low) low = value;
    if (value > high) high = value;
  }
  const scale = high > low ? 255 / (high - low) : 0;
  const gray = new Uint8Array(values.length);
  for (let i = 0; i < values.length; i += 1) {
    gray[i] = Math.min(255, Math.max(0, rint((values[i] - low) * scale)));
  }
  return { gray, width, height };
}
