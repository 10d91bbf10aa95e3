// Feature extraction to a sharded cache: f(x0, t, b) for every t × b, optionally adaptive-pooled,
// written in chunks of images as safetensors files (atomic writes) that carry their own
// provenance and checksums, so a killed run resumes by skipping finished chunks, and several
// machines can split the chunks (--shard i/n) and be merged afterwards. Readable from
// numpy/PyTorch (safetensors). Every setting is checked against chunks already in the directory
// before any work, and each shard of a directory is written by one process at a time (a lock).
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Engine } from '../engine/engine.ts';
import { adaptiveAvgPool2d } from '../engine/ops/adaptive-pool.ts';
import type { Tensor } from '../engine/tensor.ts';
import { gaussianNoise, linearSchedule, qSample } from '../model/diffusion.ts';
import { firstNonFinite } from '../model/checkpoint/tensor-source.ts';
import type { UNet } from '../model/unet.ts';
import { lockCacheShard } from './cache-lock.ts';
import { type CacheSignature, type ChunkPlan, checkCacheSignature, firstDuplicate, makeCacheSignature, planChunks, TIMESTEPS } from './cache-signature.ts';
import { checkExistingCache } from './feature-cache.ts';
import { openFeatureChunk, writeFeatureChunk } from './feature-chunk.ts';
import { noiseSeed } from './noise-seed.ts';
import { featureKey, PIXEL_BLOCK } from './feature-key.ts';

export { featureKey, PIXEL_BLOCK } from './feature-key.ts';
export { type CacheSignature, type ChunkPlan, planChunks } from './cache-signature.ts';
export { checkExistingCache, type FeatureCache, openFeatureCache, type OpenFeatureCacheOptions } from './feature-cache.ts';

export interface ImageSource {
  count: number;
  labels: ArrayLike<number>;
  /** Model input for these images: [n, 3, S, S] in [−1, 1]. */
  images(indices: readonly number[]): Float32Array | Promise<Float32Array>;
}

export interface ExtractOptions {
  outDir: string;
  timesteps: number[];
  blocks: number[];
  /** Adaptive-average-pool every feature map to pool × pool (omit to keep full maps). */
  pool?: number;
  batchSize?: number;
  /** Images per chunk file. */
  chunkSize?: number;
  seed?: number;
  /** This worker's share: chunks k with k mod count = index. */
  shard?: { index: number; count: number };
  /** Provenance stored in every chunk (config, checkpoint hash, dataset). */
  provenance: Record<string, string>;
  onProgress?: (done: number, total: number) => void;
  /** Non-fatal news, e.g. a stale lock taken over (default: console.warn). */
  onWarning?: (message: string) => void;
}

const DEFAULT_CHUNK = 256;


/**
 * The noise seed of an extraction: `seed` mixed (FNV-1a) with the dataset it reads, its provenance
 * "dataset", so two splits extracted with one seed never share ε image by image (train image i and
 * test image i had the same noise, where the paper's code draws it afresh every forward). Without a
 * dataset, the seed itself.
 */
export function extractionNoiseSeed(seed: number, dataset: string | undefined): number {
  if (!dataset) return seed;
  let h = 0x811c9dc5;
  for (let i = 0; i < dataset.length; i++) h = Math.imul(h ^ dataset.charCodeAt(i), 0x01000193) >>> 0;
  return (seed ^ h) >>> 0;
}

/** Recorded in every signature: chunks whose noise came from another rule must not be resumed into. */
const NOISE_RULE = 'mixed(seed ⊕ FNV-1a(dataset)), image, t';

const isPositiveInt = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 1;

/**
 * Checks the options of one extraction over `count` images (duplicate timesteps or blocks, sizes,
 * shard) and returns the signature every chunk it writes carries. Throws a message naming the bad
 * option. The CLI can build it before loading the model and pass it to checkExistingCache.
 */
export function validateExtractOptions(opts: ExtractOptions, count: number): CacheSignature {
  const bad = (detail: string): never => {
    throw new Error(`extract: ${detail}`);
  };
  for (const [name, list] of [['timesteps', opts.timesteps], ['blocks', opts.blocks]] as const) {
    const dup = firstDuplicate(list ?? []);
    if (dup !== undefined) bad(`${name} lists ${dup} twice (${list.join(',')}); give each once`);
  }
  if (!isPositiveInt(count)) bad(`the image source has ${count} images; it needs at least one`);
  for (const [name, v] of [['chunkSize', opts.chunkSize], ['batchSize', opts.batchSize], ['pool', opts.pool]] as const) {
    if (v !== undefined && !isPositiveInt(v)) bad(`${name} ${v} is not a positive integer`);
  }
  const sh = opts.shard;
  if (sh && !(isPositiveInt(sh.count) && Number.isInteger(sh.index) && sh.index >= 0 && sh.index < sh.count)) bad(`shard ${sh.index}/${sh.count} is out of range (0 ≤ index < count)`);
  const sig = makeCacheSignature({ ...opts.provenance, noise: NOISE_RULE }, {
    timesteps: opts.timesteps, blocks: opts.blocks, pool: opts.pool ?? null, seed: opts.seed ?? 0, count, chunkSize: opts.chunkSize ?? DEFAULT_CHUNK,
  });
  checkCacheSignature(sig, 'extract');
  return sig;
}

/** Checks the options against the U-Net's block count (0: a pixel cache) and this image source (labels). */
function checkAgainst(numBlocks: number, data: ImageSource, opts: ExtractOptions): void {
  if (!numBlocks && (opts.blocks.join() !== String(PIXEL_BLOCK) || opts.timesteps.join() !== '0')) throw new Error('extract: a pixel cache has timesteps [0] and blocks [0] (the input itself)');
  for (const b of opts.blocks) if (b > numBlocks) throw new Error(`extract: block ${b} does not exist: this U-Net has blocks 1..${numBlocks}`);
  if (data.labels.length < data.count) throw new Error(`extract: the image source has ${data.count} images but ${data.labels.length} labels`);
  for (let i = 0; i < data.count; i++) {
    const l = data.labels[i];
    // Labels are stored as I64 and read back through f32: whole numbers to 2²⁴ stay exact.
    if (!Number.isInteger(l) || l < 0 || l > 2 ** 24) throw new Error(`extract: label of image ${i} is ${l}, not a class number in 0..${2 ** 24}`);
  }
}

/** Throws when `values` (one t × b map of the batch `images`, `per` values each) holds NaN or ±Inf. */
function checkFinite(values: Float32Array, per: number, images: readonly number[], t: number, b: number): void {
  const at = firstNonFinite(values);
  if (at < 0) return;
  throw new Error(
    `extract: the U-Net produced ${values[at]} in the features at t=${t}, b=${b} of image ${images[Math.floor(at / per)]}; ` +
      'the model (check the checkpoint for NaN or Inf weights) or that input is at fault; nothing was written for its chunk',
  );
}

/** What one batch of model inputs x0 ([n, 3, S, S]) contributes to a chunk: key → values [n, ...shape]. */
type BatchFeatures = (x0: Tensor, images: readonly number[]) => Promise<Map<string, { shape: number[]; values: Float32Array }>>;

/** Extracts this worker's missing chunks of U-Net features. Returns the number of images written by this call. */
export async function extractFeatures(e: Engine, unet: UNet, data: ImageSource, opts: ExtractOptions): Promise<number> {
  const sig = validateExtractOptions(opts, data.count);
  checkAgainst(unet.numBlocks, data, opts);
  if (opts.blocks.includes(PIXEL_BLOCK)) throw new Error('extract: block 0 is the raw-pixel input; use extractPixels for a pixel cache');
  const schedule = linearSchedule(TIMESTEPS);
  const noiseBase = extractionNoiseSeed(sig.seed, opts.provenance.dataset);
  // The U-Net splits its own intermediates to fit a binding, but x0, x_t and each tap (pooled after
  // the U-Net rejoins it) are bound whole: images per call such that the largest of them fits.
  const perImage = Math.max(4 * 3 * unet.plan.flags.image_size ** 2, ...opts.blocks.map((b) => {
    const block = unet.plan.blocks[b - 1];
    return 4 * block.outChannels * block.size ** 2;
  }));
  const features: BatchFeatures = async (x0, idx) => {
    const out = new Map<string, { shape: number[]; values: Float32Array }>();
    const inputSize = x0.size / idx.length;
    for (const t of opts.timesteps) {
      const noise = new Float32Array(x0.size);
      idx.forEach((img, i) => noise.set(gaussianNoise(inputSize, noiseSeed(noiseBase, img, t)), i * inputSize));
      // Under noGrad: a U-Net whose parameters require gradients (after pretraining in this process,
      // an Adam sets them) recorded every batch's forward on the tape, which kept it all alive.
      const feats = e.noGrad(() => e.tidy(() => {
        const xt = qSample(e, schedule, x0, idx.map(() => t), e.tensor(noise, x0.shape, 'noise'));
        const r = unet.forward(xt, idx.map(() => t), { taps: opts.blocks });
        // To at most `pool`: a smaller map (b19 at 8×8 under --pool 16) is kept, never enlarged by repeating its values.
        return opts.blocks.map((b) => {
          const tap = r.taps.get(b)!;
          return opts.pool && opts.pool < tap.shape[2] ? adaptiveAvgPool2d(tap, opts.pool) : tap;
        });
      }));
      try {
        // Every block's feature in one round trip.
        const read = await e.readTensors(feats);
        for (const [k, b] of opts.blocks.entries()) {
          const values = read[k];
          checkFinite(values, values.length / idx.length, idx, t, b);
          out.set(featureKey(t, b), { shape: [...feats[k].shape.slice(1)], values });
        }
      } finally {
        for (const f of feats) f.dispose();
      }
    }
    return out;
  };
  return extractChunks(e, unet.plan.flags.image_size, data, opts, sig, features, e.perBinding(perImage));
}

/**
 * A raw-pixel cache: the exact model input x0 of every image (the U-Net's resize, channels and
 * [−1, 1] scaling; adaptive-pooled when `pool` is set and smaller) under the key of block 0, so the commands
 * that read U-Net features read it the same way. `timesteps` and `blocks` must be [0] and [0].
 */
export async function extractPixels(e: Engine, imageSize: number, data: ImageSource, opts: ExtractOptions): Promise<number> {
  const sig = validateExtractOptions(opts, data.count);
  checkAgainst(0, data, opts);
  const pixels: BatchFeatures = async (x0, idx) => {
    // As for U-Net maps, a pool only shrinks: an image smaller than the pool is stored as it is.
    const f = opts.pool && opts.pool < imageSize ? adaptiveAvgPool2d(x0, opts.pool) : x0;
    const values = await f.read();
    if (f !== x0) f.dispose();
    checkFinite(values, values.length / idx.length, idx, 0, PIXEL_BLOCK);
    return new Map([[featureKey(0, PIXEL_BLOCK), { shape: [...f.shape.slice(1)], values }]]);
  };
  return extractChunks(e, imageSize, data, opts, sig, pixels, e.perBinding(4 * 3 * imageSize ** 2));
}

/** `perCall`: the most images `features` is given at once (a batch is split into calls of at most that many). */
async function extractChunks(e: Engine, imageSize: number, data: ImageSource, opts: ExtractOptions, sig: CacheSignature, features: BatchFeatures, perCall: number): Promise<number> {
  const warn = opts.onWarning ?? ((m: string) => console.warn(`difrep: warning: ${m}`));
  const seen = new Map<string, string>();
  // Before any work (and again under the lock): a cache with other settings is refused outright.
  await checkExistingCache(opts.outDir, sig, seen);
  try {
    await mkdir(opts.outDir, { recursive: true });
  } catch (err) {
    throw new Error(`cannot create the feature cache directory ${opts.outDir}: ${(err as Error).message}`);
  }
  const lock = await lockCacheShard(opts.outDir, opts.shard, warn);
  try {
    return await extractLocked(e, imageSize, data, opts, sig, seen, features, perCall, warn);
  } finally {
    await lock.release();
  }
}

/**
 * Whether a chunk a resumed run would skip is whole: every feature map read against its checksum.
 * One that is not (a flipped byte, a disk error) is extracted again, with a warning.
 */
async function chunkIsIntact(path: string, chunk: ChunkPlan, sig: CacheSignature, warn: (m: string) => void): Promise<boolean> {
  try {
    const c = await openFeatureChunk(path, chunk, sig);
    try {
      for (const key of c.shapes.keys()) await c.read(key);
    } finally {
      await c.close();
    }
    return true;
  } catch (err) {
    warn(`${(err as Error).message.replace(/; delete .*$/, '')}: extracting that chunk again`);
    return false;
  }
}

async function extractLocked(e: Engine, S: number, data: ImageSource, opts: ExtractOptions, sig: CacheSignature, seen: Map<string, string>, features: BatchFeatures, perCall: number, warn: (m: string) => void): Promise<number> {
  const batchSize = opts.batchSize ?? 8;
  const chunks = planChunks(data.count, sig.chunkSize).filter((_, k) => !opts.shard || k % opts.shard.count === opts.shard.index);
  const existing = new Set(await checkExistingCache(opts.outDir, sig, seen));
  let done = 0;
  let written = 0;
  const total = chunks.reduce((p, c) => p + c.end - c.start, 0);
  const inputSize = 3 * S * S;
  for (const chunk of chunks) {
    if (existing.has(chunk.file) && await chunkIsIntact(join(opts.outDir, chunk.file), chunk, sig, warn)) {
      done += chunk.end - chunk.start;
      opts.onProgress?.(done, total);
      continue;
    }
    const parts = new Map<string, Float32Array[]>();
    const shape = new Map<string, number[]>();
    const batchAt = (s: number) => Array.from({ length: Math.min(batchSize, chunk.end - s) }, (_, i) => s + i);
    // The next batch's images are requested before this batch's U-Net work (decoders running in
    // worker threads overlap it).
    // (A prefetch still pending when this batch fails must not become an unhandled rejection.)
    const request = (s: number) => {
      const p = Promise.resolve(data.images(batchAt(s)));
      p.catch(() => {});
      return p;
    };
    let upcoming = request(chunk.start);
    for (let s = chunk.start; s < chunk.end; s += batchSize) {
      const idx = batchAt(s);
      const pixels = await upcoming;
      if (s + batchSize < chunk.end) upcoming = request(s + batchSize);
      if (pixels.length !== idx.length * inputSize) throw new Error(`extract: the image source returned ${pixels.length} values for ${idx.length} images; expected ${idx.length} × 3 × ${S} × ${S}`);
      const badPixel = firstNonFinite(pixels);
      if (badPixel >= 0) throw new Error(`extract: input image ${idx[Math.floor(badPixel / inputSize)]} holds ${pixels[badPixel]}; the image source is at fault`);
      for (let at = 0; at < idx.length; at += perCall) {
        const some = idx.slice(at, at + perCall);
        const x0 = e.tensor(pixels.subarray(at * inputSize, (at + some.length) * inputSize), [some.length, 3, S, S], 'x0');
        try {
          for (const [key, f] of await features(x0, some)) {
            shape.set(key, f.shape);
            if (!parts.has(key)) parts.set(key, []);
            parts.get(key)!.push(f.values);
          }
        } finally {
          x0.dispose();
        }
      }
      done += idx.length;
      opts.onProgress?.(done, total);
    }
    const chunkFeatures = new Map<string, { shape: number[]; data: Float32Array }>();
    for (const [key, arrays] of parts) {
      const flat = new Float32Array(arrays.reduce((p, a) => p + a.length, 0));
      let at = 0;
      for (const a of arrays) {
        flat.set(a, at);
        at += a.length;
      }
      chunkFeatures.set(key, { shape: shape.get(key)!, data: flat });
    }
    // Another process with other settings (another shard split into the same directory) is refused
    // before it mixes chunks with ours.
    await checkExistingCache(opts.outDir, sig, seen);
    const labels = Array.from({ length: chunk.end - chunk.start }, (_, i) => data.labels[chunk.start + i]);
    await writeFeatureChunk(join(opts.outDir, chunk.file), sig, chunk, chunkFeatures, labels);
    written += chunk.end - chunk.start;
  }
  await checkExistingCache(opts.outDir, sig, seen);
  return written;
}
