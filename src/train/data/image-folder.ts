// An ImageFolder dataset like torchvision's: root/<class name>/**/<image>, classes in sorted
// order, symlinked folders and files followed (each real folder walked once per class, so a link
// loop ends), PNG (fast-png) and JPEG (libjpeg-turbo in WebAssembly as Pillow reads it,
// ./jpeg-decoder.ts; CMYK through jpeg-js's planes, ./jpeg-cmyk.ts) decoded to RGB after the
// declared size is checked against a pixel limit, then
// guided-diffusion's center_crop_arr (./preprocess.ts: Pillow's BOX halving and BICUBIC resize of
// the shorter side, bit-exact), optional horizontal flip, scaled to [−1, 1].
import { Buffer } from 'node:buffer';
import { createHash } from 'node:crypto';
import type { Dirent } from 'node:fs';
import { readdir, readFile, realpath, stat } from 'node:fs/promises';
import { extname, join, relative, sep } from 'node:path';
import { convertIndexedToRgb, decode as decodePng, type DecodedPng } from 'fast-png';
import { describeFsError } from '../../model/checkpoint/fs-error.ts';
import { checkImageSize, MAX_IMAGE_PIXELS, readImageHeader } from './image-header.ts';
import { decodeFourComponentJpeg } from './jpeg-cmyk.ts';
import { decodeJpeg } from './jpeg-decoder.ts';
import { checkImageDataLength, decodeInterlacedLowDepth, isInterlacedLowDepth, withoutTransparencyChunks } from './png-adam7.ts';
import { preprocess, type Rgb } from './preprocess.ts';

export { FOLDER_PREPROCESSING, preprocess, type Rgb } from './preprocess.ts';

/**
 * How images are decoded, as feature caches record it: caches of JPEGs decoded by jpeg-js (before),
 * or of CMYK JPEGs with planes at lower resolution whose samples it repeated, hold other x0s.
 */
export const FOLDER_DECODER = 'PNG fast-png; JPEG libjpeg-turbo as Pillow (fancy upsampling), CMYK jpeg-js planes upsampled as libjpeg';

export { MAX_IMAGE_PIXELS } from './image-header.ts';

const EXTENSIONS = new Set(['.png', '.jpg', '.jpeg']);
/** Image files torchvision's ImageFolder or guided-diffusion would read but difrep cannot decode: counted and warned about. */
const UNREAD_IMAGE_EXTENSIONS = new Set(['.gif', '.bmp', '.webp', '.tif', '.tiff', '.ppm', '.pgm']);

export interface ImageFolder {
  root: string;
  classes: string[];
  files: string[];
  labels: number[];
  /** Warnings found while scanning (e.g. a class with one image, a link loop). */
  warnings: string[];
}

/**
 * Python's order of strings (code points), which torchvision's ImageFolder sorts classes and files
 * by; JavaScript's sort compares UTF-16 code units, which puts U+10000 and above before U+E000–U+FFFF.
 */
export const byCodePoint = (a: string, b: string): number => Buffer.compare(Buffer.from(a), Buffer.from(b));

async function listDir(dir: string): Promise<Dirent[]> {
  try {
    return await readdir(dir, { withFileTypes: true });
  } catch (e) {
    throw new Error(`cannot read the folder ${dir}: ${(e as Error).message}`);
  }
}

/** What an entry is, following a symbolic link (undefined for a broken link). */
async function kind(dir: string, d: Dirent): Promise<'dir' | 'file' | undefined> {
  if (!d.isSymbolicLink()) return d.isDirectory() ? 'dir' : d.isFile() ? 'file' : undefined;
  const st = await stat(join(dir, d.name)).catch(() => undefined);
  return st?.isDirectory() ? 'dir' : st?.isFile() ? 'file' : undefined;
}

/**
 * The image files under one class folder, in torchvision's order (sorted by folder path, then by
 * name). `walked` holds the real paths already walked for this class: a folder reached again
 * through a link (a loop, or two links to one folder) is skipped with a warning.
 */
async function classImages(dir: string, walked: Set<string>, warnings: string[]): Promise<string[]> {
  const folders: { path: string; names: string[] }[] = [];
  const unread = new Map<string, number>();
  const walk = async (path: string): Promise<void> => {
    const real = await realpath(path);
    if (walked.has(real)) {
      warnings.push(`${path} leads to ${real}, already read (a symbolic link loop or a second link to it); not read again`);
      return;
    }
    walked.add(real);
    const names: string[] = [];
    const subfolders: string[] = [];
    for (const d of await listDir(path)) {
      const k = await kind(path, d);
      if (k === 'dir') subfolders.push(join(path, d.name));
      else if (k === 'file' && EXTENSIONS.has(extname(d.name).toLowerCase())) names.push(d.name);
      else if (k === 'file' && UNREAD_IMAGE_EXTENSIONS.has(extname(d.name).toLowerCase())) unread.set(extname(d.name).toLowerCase(), (unread.get(extname(d.name).toLowerCase()) ?? 0) + 1);
      else if (!k && d.isSymbolicLink()) warnings.push(`${join(path, d.name)} is a broken symbolic link; left out`);
    }
    folders.push({ path, names: names.sort(byCodePoint) });
    for (const f of subfolders.sort(byCodePoint)) await walk(f);
  };
  await walk(dir);
  if (unread.size) {
    const count = [...unread.values()].reduce((a, b) => a + b, 0);
    const kinds = [...unread].sort().map(([ext, n]) => `${ext} ${n}`).join(', ');
    warnings.push(`${dir}: ${count} image ${count === 1 ? 'file' : 'files'} left out (${kinds}): only PNG and JPEG are read; convert ${count === 1 ? 'it' : 'them'} to use ${count === 1 ? 'it' : 'them'}`);
  }
  folders.sort((a, b) => byCodePoint(a.path, b.path));
  return folders.flatMap((f) => f.names.map((n) => join(f.path, n)));
}

export async function scanImageFolder(root: string): Promise<ImageFolder> {
  let entries;
  try {
    entries = await readdir(root, { withFileTypes: true });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'does not exist' : code === 'ENOTDIR' ? 'is a file, not a folder of class folders' : `cannot be read: ${describeFsError(err)}`;
    throw new Error(`image folder ${root} ${why}`);
  }
  const warnings: string[] = [];
  const classes: string[] = [];
  for (const d of entries) {
    // Hidden folders (.ipynb_checkpoints, .git) are not classes: one would shift the labels after it.
    if (d.name.startsWith('.')) continue;
    const k = await kind(root, d);
    if (k === 'dir') classes.push(d.name);
    else if (!k && d.isSymbolicLink()) warnings.push(`${join(root, d.name)} is a broken symbolic link; left out`);
  }
  classes.sort(byCodePoint);
  if (!classes.length) throw new Error(`${root} has no class folders (those named .* are skipped): expected ${root}/<class name>/<image>.png|jpg`);
  const files: string[] = [];
  const labels: number[] = [];
  const empty: string[] = [];
  for (const [label, cls] of classes.entries()) {
    const found = await classImages(join(root, cls), new Set(), warnings);
    if (found.length === 1) warnings.push(`class "${cls}" has a single image`);
    if (found.length === 0) empty.push(join(root, cls));
    for (const f of found) {
      files.push(f);
      labels.push(label);
    }
  }
  // Refused like torchvision's ImageFolder: an empty class still takes a label, so the labels of
  // the classes after it would differ from those of a split without it.
  if (empty.length) {
    throw new Error(
      `${empty.length === 1 ? 'class folder' : 'class folders'} ${empty.join(', ')} ${empty.length === 1 ? 'holds' : 'hold'} no PNG or JPEG image ` +
        `(.png, .jpg, .jpeg), but every folder in ${root} is a class and takes a label: add images, or move the folder out of ${root} ` +
        `(or rename it to start with '.')`,
    );
  }
  return { root, classes, files, labels, warnings };
}


export interface DecodeOptions {
  /** Largest width × height decoded (default MAX_IMAGE_PIXELS, where Pillow refuses an image). */
  maxPixels?: number;
}

/** One value per channel per pixel of a PNG with 1-, 2- or 4-bit samples (rows start on a byte). */
function unpackSamples(png: DecodedPng): Uint8Array {
  const { width, height, channels, depth } = png;
  const src = png.data as Uint8Array;
  const perRow = width * channels;
  const rowBytes = Math.ceil((perRow * depth) / 8);
  const out = new Uint8Array(perRow * height);
  const mask = (1 << depth) - 1;
  for (let y = 0; y < height; y++) {
    for (let i = 0; i < perRow; i++) {
      const bit = i * depth;
      out[y * perRow + i] = (src[y * rowBytes + (bit >> 3)] >> (8 - depth - (bit & 7))) & mask;
    }
  }
  return out;
}

/**
 * 8-bit levels of a decoded PNG's samples. 16-bit colour (RGB, RGBA, grey + alpha) keeps the high
 * byte, as Pillow does (v >> 8); 16-bit grey, which Pillow opens as 32-bit integers and clips to
 * 255 in convert('RGB') (every level from 256 up white), is scaled instead (v/257, rounded); 1-,
 * 2- and 4-bit grey are scaled to 0..255 (Pillow's levels).
 */
function levelsOf(png: DecodedPng, channels: number): (v: number) => number {
  if (png.depth === 16) return channels === 1 ? (v) => Math.round(v / 257) : (v) => v >> 8;
  if (png.depth < 8 && !png.palette) {
    const scale = 255 / ((1 << png.depth) - 1);
    return (v) => Math.round(v * scale);
  }
  return (v) => v;
}

function pngToRgb(png: DecodedPng): Rgb {
  const { width, height } = png;
  let channels = png.channels;
  let src: ArrayLike<number> = png.data;
  if (png.palette) {
    src = convertIndexedToRgb(png);
    channels = png.palette[0].length;
  } else if (png.depth < 8) {
    src = unpackSamples(png);
  }
  // 8-bit RGB needs no conversion: the decoder's pixels are used as they are.
  if (channels === 3 && src instanceof Uint8Array) return { width, height, data: src };
  const level = levelsOf(png, channels);
  const out = new Uint8Array(width * height * 3);
  for (let i = 0; i < width * height; i++) {
    for (let c = 0; c < 3; c++) {
      const v = channels >= 3 ? src[i * channels + c] : src[i * channels];
      out[i * 3 + c] = level(v);
    }
  }
  return { width, height, data: out };
}

/**
 * Decodes a PNG or JPEG file to 8-bit RGB (grey, palette and alpha are converted, 16-bit and
 * 1/2/4-bit are scaled, interlaced 1/2/4-bit PNGs go through png-adam7.ts as fast-png misreads
 * them; PNG chunk CRCs are checked). The declared size is checked against maxPixels before anything
 * is decoded.
 */
export function decodeImage(bytes: Uint8Array, options: DecodeOptions = {}): Rgb {
  const maxPixels = options.maxPixels ?? MAX_IMAGE_PIXELS;
  const header = readImageHeader(bytes);
  checkImageSize(header, maxPixels);
  if (header.format === 'jpeg') {
    // One and three channels as PIL reads them (libjpeg); four (CMYK, YCCK) through jpeg-js's planes.
    if (header.components !== 4) return decodeJpeg(bytes);
    return decodeFourComponentJpeg(bytes, { maxResolutionInMP: Math.ceil(maxPixels / 1e6), maxMemoryUsageInMB: Math.max(512, Math.ceil((maxPixels * 8) / 2 ** 20)) });
  }
  if (isInterlacedLowDepth(bytes)) return pngToRgb(decodeInterlacedLowDepth(bytes));
  checkImageDataLength(bytes);
  return pngToRgb(decodePng(withoutTransparencyChunks(bytes), { checkCrc: true }));
}


/** Files read at once while fingerprinting a folder. */
const FINGERPRINT_READS = 64;

/**
 * A fingerprint of the images `idx` of `folder`: SHA-256 over each one's path under the root and
 * the SHA-256 of its bytes, in order, and those per-file digests (`sha256`, in idx order). Shards
 * of one cache, or a resumed extraction, that read a folder whose files have since changed then
 * carry another fingerprint and are not merged (a cache records its provenance). Path and size
 * alone, as before, let an image rewritten at the same size (an uncompressed PNG, a re-encoded JPEG
 * of equal length) pass: one cache then mixed two versions of the dataset. Decoding against
 * `sha256` (loadBatch) catches a file rewritten during the run itself.
 */
export async function folderFingerprint(folder: ImageFolder, idx: readonly number[]): Promise<{ fingerprint: string; sha256: string[] }> {
  const hash = createHash('sha256');
  const sha256: string[] = [];
  for (let start = 0; start < idx.length; start += FINGERPRINT_READS) {
    const files = idx.slice(start, start + FINGERPRINT_READS).map((i) => folder.files[i]);
    const digests = await Promise.all(files.map(async (file) => sha256Hex(await readFile(file))));
    files.forEach((file, k) => hash.update(`${relative(folder.root, file)}\t${digests[k]}\n`));
    sha256.push(...digests);
  }
  return { fingerprint: `contents-sha256:${hash.digest('hex')}`, sha256 };
}

const sha256Hex = (bytes: Uint8Array) => createHash('sha256').update(bytes).digest('hex');

/** What became of one file of a batch. */
export type ImageResult = { file: string; ok: true } | { file: string; ok: false; error: string };

export interface DecodedBatch {
  images: Float32Array;
  /** One result per file, in order; a failed file's slot is left at 0. */
  results: ImageResult[];
}

/**
 * Reads, decodes and preprocesses these files into one [n, 3, size, size] batch. With `sha256`
 * (each file's digest when the run fingerprinted it), a file whose bytes no longer match is
 * refused: its features would be stored under the old contents' fingerprint.
 */
export async function loadBatch(files: readonly string[], size: number, flips?: readonly boolean[], options: DecodeOptions = {}, sha256?: readonly string[]): Promise<DecodedBatch> {
  const images = new Float32Array(files.length * 3 * size * size);
  const results: ImageResult[] = await Promise.all(files.map(async (file, i): Promise<ImageResult> => {
    try {
      const bytes = new Uint8Array(await readFile(file));
      if (sha256 && sha256Hex(bytes) !== sha256[i]) {
        throw new Error('its contents changed after this run fingerprinted the folder (the cache records that fingerprint): leave the images as they are while the run lasts, then run it again');
      }
      // Decoding is synchronous, so one decoded image at a time is in memory.
      preprocess(decodeImage(bytes, options), size, flips?.[i] ?? false, images, i * 3 * size * size);
      return { file, ok: true };
    } catch (e) {
      return { file, ok: false, error: (e as Error).message };
    }
  }));
  return { images, results };
}

/** A file left out of the dataset and why. */
export interface ImageFailure {
  file: string;
  error: string;
}

/**
 * Decodes every image once; unreadable ones (and those over the pixel limit) are dropped from the
 * folder and listed, so later passes never meet them.
 */
export async function validateImageFolder(folder: ImageFolder, onProgress?: (done: number, total: number) => void, options: DecodeOptions = {}): Promise<{ folder: ImageFolder; skipped: ImageFailure[]; imagesPerSecond: number }> {
  const t0 = performance.now();
  const keep: number[] = [];
  const skipped: ImageFailure[] = [];
  const step = 16;
  for (let s = 0; s < folder.files.length; s += step) {
    const { results } = await loadBatch(folder.files.slice(s, s + step), 8, undefined, options);
    results.forEach((r, i) => (r.ok ? keep.push(s + i) : skipped.push({ file: r.file, error: r.error })));
    onProgress?.(Math.min(folder.files.length, s + step), folder.files.length);
  }
  const imagesPerSecond = folder.files.length / ((performance.now() - t0) / 1000);
  // A class whose every image was skipped still takes a label, as an empty class folder would
  // (scanImageFolder refuses those): a head would never see it, and its test images never score.
  const readable = new Set(keep.map((i) => folder.labels[i]));
  const unreadable = folder.classes.filter((_, c) => !readable.has(c));
  if (unreadable.length) {
    const first = skipped.find((f) => unreadable.some((cls) => f.file.startsWith(`${join(folder.root, cls)}${sep}`)));
    throw new Error(
      `${unreadable.length === 1 ? 'class folder' : 'class folders'} ${unreadable.map((cls) => join(folder.root, cls)).join(', ')} ` +
        `${unreadable.length === 1 ? 'holds' : 'hold'} no readable image (${first ? `${first.file}: ${first.error}` : 'every file was skipped'}), but every folder in ${folder.root} ` +
        `is a class and takes a label: replace the unreadable files, or move the folder out of ${folder.root} (or rename it to start with '.')`,
    );
  }
  return { folder: { ...folder, files: keep.map((i) => folder.files[i]), labels: keep.map((i) => folder.labels[i]) }, skipped, imagesPerSecond };
}
