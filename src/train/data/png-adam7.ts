// Interlaced (Adam7) PNGs with 1-, 2- or 4-bit samples, which fast-png 8.0.0 cannot decode: its
// Adam7 path takes every pixel as at least one byte, so it reads the wrong number of bytes per pass
// row. A tiny image comes out scrambled (or, with a palette, is refused as "wrong data size"); a
// larger one fails on a filter byte read from the middle of the pixels. Nothing in its output can
// be repaired, so these files are decoded here from their chunks (PNG spec §5, §8.2, §9) into the
// layout fast-png gives the same image uninterlaced: packed rows, each starting on a byte. The same
// chunk walk and pass geometry check every PNG's image data for length (checkImageDataLength),
// which fast-png does not.
import { Buffer } from 'node:buffer';
import { inflateSync } from 'node:zlib';
import type { BitDepth, DecodedPng } from 'fast-png';

const u32 = (b: Uint8Array, at: number) => ((b[at] << 24) | (b[at + 1] << 16) | (b[at + 2] << 8) | b[at + 3]) >>> 0;

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

// Adam7 passes: first column, first row, column step, row step.
const PASSES = [[0, 0, 8, 8], [4, 0, 8, 8], [0, 4, 4, 8], [2, 0, 4, 4], [0, 2, 2, 4], [1, 0, 2, 2], [0, 1, 1, 2]] as const;

/** Whether the IHDR (the chunk at byte 8) declares fewer than 8 bits per sample (byte 24) and Adam7 (byte 28). */
export function isInterlacedLowDepth(bytes: Uint8Array): boolean {
  return bytes.length > 28 && bytes[24] < 8 && bytes[28] === 1;
}

function paeth(a: number, b: number, c: number): number {
  const pa = Math.abs(b - c);
  const pb = Math.abs(a - c);
  const pc = Math.abs(a + b - 2 * c);
  return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

/** Undoes one row's filter. Samples under 8 bits are single-channel, so "the pixel to the left" is the byte before (§9.2). */
function unfilter(filter: number, line: Uint8Array, prev: Uint8Array, pass: number): Uint8Array {
  if (filter > 4) throw new Error(`PNG: unknown filter type ${filter} in Adam7 pass ${pass} (corrupted file)`);
  const cur = new Uint8Array(line.length);
  for (let i = 0; i < line.length; i++) {
    const a = i ? cur[i - 1] : 0;
    const b = prev[i];
    const c = i ? prev[i - 1] : 0;
    cur[i] = line[i] + (filter === 0 ? 0 : filter === 1 ? a : filter === 2 ? b : filter === 3 ? (a + b) >> 1 : paeth(a, b, c));
  }
  return cur;
}

/** A PNG's IDAT chunks, in order, and its PLTE chunk's colours (chunk CRCs checked). */
function readChunks(bytes: Uint8Array): { idat: Uint8Array[]; plte?: Uint8Array } {
  let plte: Uint8Array | undefined;
  const idat: Uint8Array[] = [];
  for (let at = 8; ; ) {
    if (at + 12 > bytes.length) throw new Error('PNG: ends before its IEND chunk (truncated file)');
    const type = String.fromCharCode(...bytes.subarray(at + 4, at + 8));
    const end = at + 8 + u32(bytes, at);
    if (end + 4 > bytes.length) throw new Error(`PNG: chunk ${type} is cut short (truncated file)`);
    if (crc32(bytes.subarray(at + 4, end)) !== u32(bytes, end)) throw new Error(`PNG: CRC mismatch for chunk ${type} (corrupted file)`);
    if (type === 'IEND') break;
    const data = bytes.subarray(at + 8, end);
    if (type === 'IDAT') idat.push(data);
    else if (type === 'PLTE') plte = data;
    at = end + 4;
  }
  return { idat, plte };
}

/**
 * The PNG without its tRNS chunks (`bytes` itself when it has none). decodeImage gives RGB as PIL's
 * convert('RGB') does, which ignores transparency, and fast-png refuses two kinds libpng and Pillow
 * read: an RGB or grey key colour in an image of fewer pixels than the chunk has samples ("more
 * alpha values than there are pixels", a 1×1 RGB PNG), and palette alphas longer than the palette.
 */
export function withoutTransparencyChunks(bytes: Uint8Array): Uint8Array {
  const dropped: [number, number][] = [];
  for (let at = 8; at + 12 <= bytes.length; ) {
    const type = String.fromCharCode(...bytes.subarray(at + 4, at + 8));
    const next = at + 12 + u32(bytes, at);
    if (next > bytes.length || type === 'IEND') break; // a cut file keeps its bytes, and its error
    if (type === 'tRNS') dropped.push([at, next]);
    at = next;
  }
  if (!dropped.length) return bytes;
  const out = new Uint8Array(bytes.length - dropped.reduce((n, [a, b]) => n + b - a, 0));
  let from = 0;
  let to = 0;
  for (const [a, b] of dropped) {
    out.set(bytes.subarray(from, a), to);
    to += a - from;
    from = b;
  }
  out.set(bytes.subarray(from), to);
  return out;
}

/** Adam7's passes (or the one pass of a plain PNG) of a width × height image of `bits` per pixel. */
function passesOf(width: number, height: number, bits: number, interlaced: boolean) {
  return (interlaced ? PASSES : [[0, 0, 1, 1] as const]).map(([x0, y0, dx, dy]) => {
    const w = Math.max(0, Math.ceil((width - x0) / dx));
    // A pass without columns has no rows either, not even filter bytes (§8.2).
    const h = w && Math.max(0, Math.ceil((height - y0) / dy));
    return { x0, y0, dx, dy, w, h, rowBytes: Math.ceil((w * bits) / 8) };
  });
}

/** Samples per pixel of each PNG colour type (§11.2.2): grey, RGB, palette, grey + alpha, RGBA. */
const CHANNELS: Record<number, number> = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 };

/**
 * The image data inflated, refused unless it holds the filtered rows the IHDR declares: exactly,
 * or with `longerToo` at least (data past the last row, which Pillow ignores; null then).
 */
function inflateImageData(bytes: Uint8Array, idat: Uint8Array[], longerToo = false): Uint8Array | null {
  const [width, height, depth, colourType, interlaced] = [u32(bytes, 16), u32(bytes, 20), bytes[24], bytes[25], bytes[28] === 1];
  const bits = depth * (CHANNELS[colourType] ?? 1);
  const expected = passesOf(width, height, bits, interlaced).reduce((n, p) => n + p.h * (1 + p.rowBytes), 0);
  const layout = `${width} × ${height}${interlaced ? ' interlaced' : ''} at ${bits} bits a pixel`;
  let raw: Uint8Array;
  try {
    raw = inflateSync(Buffer.concat(idat), { maxOutputLength: expected });
  } catch (e) {
    if (longerToo && (e as { code?: string }).code === 'ERR_BUFFER_TOO_LARGE') return null;
    throw new Error(`PNG: cannot inflate the image data to the ${expected} bytes ${layout} needs (${(e as Error).message}; corrupted or truncated file)`);
  }
  if (raw.length !== expected) throw new Error(`PNG: image data has ${raw.length} bytes, ${layout} needs ${expected} (truncated or corrupted file)`);
  return raw;
}

/**
 * Refuses a PNG whose image data inflates to fewer bytes than its IHDR declares. fast-png decoded
 * one a part row short without a word, the missing pixels black (Pillow 9.4: "image file is
 * truncated"), and failed on one whole rows short with "Unsupported filter" (Pillow loads that one,
 * the missing rows black): both are damaged files, listed as unreadable.
 */
export function checkImageDataLength(bytes: Uint8Array): void {
  inflateImageData(bytes, readChunks(bytes).idat, true);
}

/** Decodes an interlaced grey or palette PNG of bit depth 1, 2 or 4 (chunk CRCs checked). */
export function decodeInterlacedLowDepth(bytes: Uint8Array): DecodedPng {
  const width = u32(bytes, 16);
  const height = u32(bytes, 20);
  const depth = bytes[24];
  const colourType = bytes[25];
  if ((depth !== 1 && depth !== 2 && depth !== 4) || (colourType !== 0 && colourType !== 3)) {
    throw new Error(`PNG: bit depth ${depth} is not allowed with colour type ${colourType} (corrupted file)`);
  }
  const { idat, plte } = readChunks(bytes);
  let palette: number[][] | undefined;
  if (colourType === 3) {
    if (!plte) throw new Error('PNG: palette image without a PLTE chunk (corrupted file)');
    if (plte.length % 3) throw new Error(`PNG: PLTE chunk of ${plte.length} bytes, not a multiple of 3 (corrupted file)`);
    palette = Array.from({ length: plte.length / 3 }, (_, i) => Array.from(plte.subarray(3 * i, 3 * i + 3)));
  }
  const passes = passesOf(width, height, depth, true);
  const raw = inflateImageData(bytes, idat)!;
  const rowBytes = Math.ceil((width * depth) / 8);
  const out = new Uint8Array(rowBytes * height);
  const mask = (1 << depth) - 1;
  let at = 0;
  for (const [i, p] of passes.entries()) {
    let prev: Uint8Array = new Uint8Array(p.rowBytes);
    for (let py = 0; py < p.h; py++) {
      const cur = unfilter(raw[at], raw.subarray(at + 1, at + 1 + p.rowBytes), prev, i + 1);
      at += 1 + p.rowBytes;
      const y = p.y0 + py * p.dy;
      for (let px = 0; px < p.w; px++) {
        const s = (cur[(px * depth) >> 3] >> (8 - depth - ((px * depth) & 7))) & mask;
        const bit = (p.x0 + px * p.dx) * depth;
        out[y * rowBytes + (bit >> 3)] |= s << (8 - depth - (bit & 7));
      }
      prev = cur;
    }
  }
  return { width, height, depth: depth as BitDepth, channels: 1, data: out, text: {}, palette };
}
