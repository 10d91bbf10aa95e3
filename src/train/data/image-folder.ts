// An ImageFolder dataset like torchvision's: root/<class name>/<image>, classes in sorted order,
// PNG (fast-png) and JPEG (jpeg-js: pure JavaScript, no native build, the most used decoder on
// npm) decoded to RGB, the shorter side resized to the model size (area averaging when shrinking,
// bilinear when growing), a centre crop, optional horizontal flip, scaled to [−1, 1].
import { readdir, readFile } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { decode as decodePng } from 'fast-png';
import jpeg from 'jpeg-js';

const EXTENSIONS = new Set(['.png', '.jpg', '.jpeg']);

export interface ImageFolder {
  root: string;
  classes: string[];
  files: string[];
  labels: number[];
  /** Warnings found while scanning (e.g. a class with one image). */
  warnings: string[];
}

export async function scanImageFolder(root: string): Promise<ImageFolder> {
  let entries;
  try {
    entries = await readdir(root, { withFileTypes: true });
  } catch {
    throw new Error(`image folder ${root} does not exist or cannot be read`);
  }
  const classes = entries.filter((d) => d.isDirectory()).map((d) => d.name).sort();
  if (!classes.length) throw new Error(`${root} has no class folders: expected ${root}/<class name>/<image>.png|jpg`);
  const files: string[] = [];
  const labels: number[] = [];
  const warnings: string[] = [];
  for (const [label, cls] of classes.entries()) {
    const names = (await readdir(join(root, cls))).filter((f) => EXTENSIONS.has(extname(f).toLowerCase())).sort();
    if (names.length === 1) warnings.push(`class "${cls}" has a single image`);
    if (names.length === 0) warnings.push(`class "${cls}" has no PNG or JPEG images`);
    for (const n of names) {
      files.push(join(root, cls, n));
      labels.push(label);
    }
  }
  if (!files.length) throw new Error(`${root} holds no PNG or JPEG images in its ${classes.length} class folders`);
  return { root, classes, files, labels, warnings };
}

export interface Rgb {
  width: number;
  height: number;
  /** RGB, row-major, uint8. */
  data: Uint8Array;
}

/** Decodes a PNG or JPEG file to 8-bit RGB (grey and alpha are converted, 16-bit is scaled). */
export function decodeImage(bytes: Uint8Array): Rgb {
  const isPng = bytes[0] === 0x89 && bytes[1] === 0x50;
  const isJpeg = bytes[0] === 0xff && bytes[1] === 0xd8;
  if (isJpeg) {
    const img = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: false, maxMemoryUsageInMB: 1024 });
    return { width: img.width, height: img.height, data: img.data as Uint8Array };
  }
  if (!isPng) throw new Error('neither PNG nor JPEG');
  const img = decodePng(bytes);
  const { width, height, channels } = img;
  const src = img.data;
  const scale = img.depth === 16 ? 1 / 257 : 1;
  const out = new Uint8Array(width * height * 3);
  for (let i = 0; i < width * height; i++) {
    for (let c = 0; c < 3; c++) {
      const v = channels >= 3 ? src[i * channels + c] : src[i * channels];
      out[i * 3 + c] = Math.round(v * scale);
    }
  }
  return { width, height, data: out };
}

/** Resize the shorter side to `size`, centre crop size×size, optional flip → CHW floats in [−1, 1]. */
export function preprocess(img: Rgb, size: number, flip: boolean, out: Float32Array, offset: number): void {
  const scale = size / Math.min(img.width, img.height);
  const w = Math.max(size, Math.round(img.width * scale));
  const h = Math.max(size, Math.round(img.height * scale));
  const x0 = Math.floor((w - size) / 2);
  const y0 = Math.floor((h - size) / 2);
  const plane = size * size;
  for (let y = 0; y < size; y++) {
    // Source interval covered by this output pixel (area averaging when shrinking).
    const sy0 = (y + y0) / scale;
    const sy1 = (y + y0 + 1) / scale;
    for (let x = 0; x < size; x++) {
      const ox = flip ? size - 1 - x : x;
      const sx0 = (x + x0) / scale;
      const sx1 = (x + x0 + 1) / scale;
      const acc = [0, 0, 0];
      let wsum = 0;
      if (scale < 1) {
        for (let yy = Math.floor(sy0); yy < Math.min(img.height, Math.ceil(sy1)); yy++) {
          const wy = Math.min(yy + 1, sy1) - Math.max(yy, sy0);
          for (let xx = Math.floor(sx0); xx < Math.min(img.width, Math.ceil(sx1)); xx++) {
            const wgt = wy * (Math.min(xx + 1, sx1) - Math.max(xx, sx0));
            for (let c = 0; c < 3; c++) acc[c] += wgt * img.data[(yy * img.width + xx) * 3 + c];
            wsum += wgt;
          }
        }
      } else {
        const sy = Math.min(Math.max((sy0 + sy1) / 2 - 0.5, 0), img.height - 1);
        const sx = Math.min(Math.max((sx0 + sx1) / 2 - 0.5, 0), img.width - 1);
        const ya = Math.floor(sy);
        const xa = Math.floor(sx);
        const yb = Math.min(ya + 1, img.height - 1);
        const xb = Math.min(xa + 1, img.width - 1);
        const ly = sy - ya;
        const lx = sx - xa;
        for (let c = 0; c < 3; c++) {
          const v = (r: number, q: number) => img.data[(r * img.width + q) * 3 + c];
          acc[c] = (1 - ly) * ((1 - lx) * v(ya, xa) + lx * v(ya, xb)) + ly * ((1 - lx) * v(yb, xa) + lx * v(yb, xb));
        }
        wsum = 1;
      }
      for (let c = 0; c < 3; c++) out[offset + c * plane + y * size + ox] = acc[c] / wsum / 127.5 - 1;
    }
  }
}

export interface DecodedBatch {
  images: Float32Array;
  /** Files that could not be decoded (skipped and counted, their slots left at 0). */
  failed: string[];
}

/** Reads, decodes and preprocesses these files into one [n, 3, size, size] batch. */
export async function loadBatch(files: readonly string[], size: number, flips?: readonly boolean[]): Promise<DecodedBatch> {
  const images = new Float32Array(files.length * 3 * size * size);
  const failed: string[] = [];
  await Promise.all(files.map(async (f, i) => {
    try {
      preprocess(decodeImage(new Uint8Array(await readFile(f))), size, flips?.[i] ?? false, images, i * 3 * size * size);
    } catch (e) {
      failed.push(`${f}: ${(e as Error).message}`);
    }
  }));
  return { images, failed };
}

/**
 * Decodes every image once; unreadable ones are dropped from the folder (and listed), so later
 * passes never meet them.
 */
export async function validateImageFolder(folder: ImageFolder, onProgress?: (done: number, total: number) => void): Promise<{ folder: ImageFolder; skipped: string[]; imagesPerSecond: number }> {
  const t0 = performance.now();
  const keep: number[] = [];
  const skipped: string[] = [];
  const step = 16;
  for (let s = 0; s < folder.files.length; s += step) {
    const part = folder.files.slice(s, s + step);
    const { failed } = await loadBatch(part, 8);
    const bad = new Set(failed.map((f) => f.slice(0, f.indexOf(': '))));
    part.forEach((f, i) => (bad.has(f) ? skipped.push(failed.find((x) => x.startsWith(`${f}: `))!) : keep.push(s + i)));
    onProgress?.(Math.min(folder.files.length, s + step), folder.files.length);
  }
  const imagesPerSecond = folder.files.length / ((performance.now() - t0) / 1000);
  return { folder: { ...folder, files: keep.map((i) => folder.files[i]), labels: keep.map((i) => folder.labels[i]) }, skipped, imagesPerSecond };
}
