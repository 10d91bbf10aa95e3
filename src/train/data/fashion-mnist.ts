// Fashion-MNIST from Debian's dataset-fashion-mnist package (IDX files, gzip): 28×28 grey images,
// 10 classes. Decompressed with node:zlib (Node, Deno).
import { gunzipSync } from 'node:zlib';
import { readFile } from 'node:fs/promises';
import { mulberry32 } from '../../engine/random.ts';
import type { ImageSource } from '../extract.ts';
import { type GreyImages, toModelInput } from './grey-images.ts';

export { type GreyImages, toModelInput };

export const FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist';
export const FASHION_MNIST_CLASSES = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'];


export class DatasetMissingError extends Error {
  constructor(detail: string) {
    super(detail);
    this.name = 'DatasetMissingError';
  }
}

function readIdx(bytes: Uint8Array, file: string, magic: number): { dims: number[]; data: Uint8Array } {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const rank = magic & 0xff;
  const start = 4 + 4 * rank;
  // A header cut short is read no further (the DataView would throw a RangeError naming no file).
  if (bytes.length < 4) throw new Error(`${file}: not an IDX file (${bytes.length} bytes, no header; truncated or corrupted file)`);
  if (v.getUint32(0, false) !== magic) throw new Error(`${file}: not an IDX file (magic ${v.getUint32(0, false).toString(16)}, expected ${magic.toString(16)})`);
  if (bytes.length < start) throw new Error(`${file}: truncated IDX header (${bytes.length} of its ${start} bytes)`);
  const dims = Array.from({ length: rank }, (_, i) => v.getUint32(4 + 4 * i, false));
  // An image of 0 × 0 pixels resized to NaN.
  if (dims.slice(1).some((d) => d === 0)) throw new Error(`${file}: its header declares items of ${dims.slice(1).join(' × ')} values (corrupted file)`);
  const n = dims.reduce((p, d) => p * d, 1);
  if (bytes.length < start + n) throw new Error(`${file}: truncated (${bytes.length - start} of ${n} bytes)`);
  if (bytes.length > start + n) throw new Error(`${file}: ${bytes.length - start - n} bytes past the ${n} its header declares (corrupted file)`);
  return { dims, data: bytes.subarray(start, start + n) };
}

async function gz(path: string): Promise<Uint8Array> {
  let raw: Uint8Array;
  try {
    raw = await readFile(path);
  } catch {
    throw new DatasetMissingError(`Fashion-MNIST not found at ${path}: install it with \`apt-get install dataset-fashion-mnist\` (npm run setup does this)`);
  }
  try {
    return new Uint8Array(gunzipSync(raw));
  } catch (e) {
    throw new Error(`${path}: cannot decompress (${(e as Error).message}; truncated or corrupted file: reinstall dataset-fashion-mnist)`);
  }
}

/** The `train` (60,000) or `test` (10,000) split. */
export async function loadFashionMnist(split: 'train' | 'test', dir = FASHION_MNIST_DIR): Promise<GreyImages> {
  const prefix = split === 'train' ? 'train' : 't10k';
  const imagesFile = `${dir}/${prefix}-images-idx3-ubyte.gz`;
  const labelsFile = `${dir}/${prefix}-labels-idx1-ubyte.gz`;
  const images = readIdx(await gz(imagesFile), imagesFile, 0x803);
  const labels = readIdx(await gz(labelsFile), labelsFile, 0x801);
  if (images.dims[0] !== labels.dims[0]) throw new Error(`${dir}: ${images.dims[0]} images but ${labels.dims[0]} labels`);
  const bad = labels.data.findIndex((y) => y >= FASHION_MNIST_CLASSES.length);
  if (bad >= 0) throw new Error(`${labelsFile}: label ${bad} is ${labels.data[bad]}, not a class 0..${FASHION_MNIST_CLASSES.length - 1} (corrupted file)`);
  return { pixels: images.data, labels: labels.data, count: images.dims[0], rows: images.dims[1], cols: images.dims[2] };
}


/** The images `indices` of `ds` (in that order) as model input of size × size, for extraction and DifFeed. */
export function imageSource(ds: GreyImages, indices: readonly number[], size: number): ImageSource {
  return { count: indices.length, labels: indices.map((i) => ds.labels[i]), images: (sel) => toModelInput(ds, sel.map((i) => indices[i]), size) };
}

/** A seeded, class-balanced subset: `perClass` images of each class (the first ones of a seeded shuffle). */
export function balancedSubset(labels: ArrayLike<number>, perClass: number, seed: number, classes = 10): number[] {
  const order = seededShuffle(Array.from({ length: labels.length }, (_, i) => i), seed);
  const taken = new Array<number>(classes).fill(0);
  const out: number[] = [];
  for (const i of order) {
    if (taken[labels[i]] < perClass) {
      taken[labels[i]]++;
      out.push(i);
    }
  }
  return out;
}

/** Fisher–Yates with a seeded generator. */
export function seededShuffle<T>(items: T[], seed: number): T[] {
  const a = [...items];
  const rand = mulberry32(seed);
  for (let i = a.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}
