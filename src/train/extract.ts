// Feature extraction to a sharded cache: f(x0, t, b) for every t × b, optionally adaptive-pooled,
// written in chunks of images as safetensors files (atomic writes) that carry their own
// provenance, so a killed run resumes by skipping finished chunks, and several machines can split
// the chunks (--shard i/n) and be merged afterwards. Readable from numpy/PyTorch (safetensors).
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Engine } from '../engine/engine.ts';
import { adaptiveAvgPool2d } from '../engine/ops/adaptive-pool.ts';
import type { Tensor } from '../engine/tensor.ts';
import { writeFileAtomic } from '../model/checkpoint/atomic-write.ts';
import { openSafetensors, writeSafetensors } from '../model/checkpoint/safetensors.ts';
import { gaussianNoise, linearSchedule, qSample } from '../model/diffusion.ts';
import type { UNet } from '../model/unet.ts';
import { featureKey } from './feature-key.ts';

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
}

/** Per-image noise seed, so a feature never depends on batch composition or sharding. */
export function noiseSeed(seed: number, image: number, t: number): number {
  let h = (seed ^ 0x9e3779b9) >>> 0;
  for (const v of [image, t]) {
    h = Math.imul(h ^ v, 0x85ebca6b) >>> 0;
    h ^= h >>> 13;
    h = Math.imul(h, 0xc2b2ae35) >>> 0;
    h ^= h >>> 16;
  }
  return h;
}

export { featureKey } from './feature-key.ts';
const chunkName = (start: number, end: number) => `chunk-${String(start).padStart(8, '0')}-${String(end).padStart(8, '0')}.safetensors`;

export interface ChunkPlan {
  start: number;
  end: number;
  file: string;
}

export function planChunks(count: number, chunkSize: number): ChunkPlan[] {
  const out: ChunkPlan[] = [];
  for (let s = 0; s < count; s += chunkSize) out.push({ start: s, end: Math.min(count, s + chunkSize), file: chunkName(s, Math.min(count, s + chunkSize)) });
  return out;
}

/** Provenance string that every chunk of one extraction shares. */
function signature(opts: ExtractOptions, count: number): string {
  return JSON.stringify({ ...opts.provenance, timesteps: opts.timesteps, blocks: opts.blocks, pool: opts.pool ?? null, seed: opts.seed ?? 0, count, chunkSize: opts.chunkSize ?? 256 });
}

/** Extracts this worker's missing chunks. Returns the number of images written by this call. */
export async function extractFeatures(e: Engine, unet: UNet, data: ImageSource, opts: ExtractOptions): Promise<number> {
  const chunkSize = opts.chunkSize ?? 256;
  const batchSize = opts.batchSize ?? 8;
  const seed = opts.seed ?? 0;
  const sig = signature(opts, data.count);
  const schedule = linearSchedule(1000);
  const chunks = planChunks(data.count, chunkSize).filter((_, k) => !opts.shard || k % opts.shard.count === opts.shard.index);
  const existing = new Set(await readdir(opts.outDir).catch(() => [] as string[]));
  let done = 0;
  let written = 0;
  const total = chunks.reduce((p, c) => p + c.end - c.start, 0);
  const S = unet.plan.flags.image_size;
  for (const chunk of chunks) {
    if (existing.has(chunk.file)) {
      const prev = await openSafetensors(join(opts.outDir, chunk.file));
      const same = prev.metadata.signature === sig;
      await prev.close();
      if (!same) throw new Error(`${join(opts.outDir, chunk.file)} was written by an extraction with other settings; use another --out directory`);
      done += chunk.end - chunk.start;
      opts.onProgress?.(done, total);
      continue;
    }
    const parts = new Map<string, Float32Array[]>();
    let shape: Map<string, number[]> = new Map();
    const batchAt = (s: number) => Array.from({ length: Math.min(batchSize, chunk.end - s) }, (_, i) => s + i);
    // The next batch's images are requested before this batch's U-Net work (decoders running in
    // worker threads overlap it).
    let upcoming = Promise.resolve(data.images(batchAt(chunk.start)));
    for (let s = chunk.start; s < chunk.end; s += batchSize) {
      const idx = batchAt(s);
      const pixels = await upcoming;
      if (s + batchSize < chunk.end) upcoming = Promise.resolve(data.images(batchAt(s + batchSize)));
      const x0 = e.tensor(pixels, [idx.length, 3, S, S], 'x0');
      for (const t of opts.timesteps) {
        const noise = new Float32Array(idx.length * 3 * S * S);
        idx.forEach((img, i) => noise.set(gaussianNoise(3 * S * S, noiseSeed(seed, img, t)), i * 3 * S * S));
        const feats = e.tidy(() => {
          const xt = qSample(e, schedule, x0, idx.map(() => t), e.tensor(noise, x0.shape, 'noise'));
          const r = unet.forward(xt, idx.map(() => t), { taps: opts.blocks });
          return opts.blocks.map((b) => (opts.pool ? adaptiveAvgPool2d(r.taps.get(b)!, opts.pool) : r.taps.get(b)!));
        });
        for (const [k, b] of opts.blocks.entries()) {
          const key = featureKey(t, b);
          const f: Tensor = feats[k];
          shape.set(key, [...f.shape.slice(1)]);
          if (!parts.has(key)) parts.set(key, []);
          parts.get(key)!.push(await f.read());
          f.dispose();
        }
      }
      x0.dispose();
      done += idx.length;
      opts.onProgress?.(done, total);
    }
    const n = chunk.end - chunk.start;
    const tensors: Record<string, { shape: number[]; data: Float32Array | BigInt64Array }> = {};
    for (const [key, arrays] of parts) {
      const flat = new Float32Array(arrays.reduce((p, a) => p + a.length, 0));
      let at = 0;
      for (const a of arrays) {
        flat.set(a, at);
        at += a.length;
      }
      tensors[key] = { shape: [n, ...shape.get(key)!], data: flat };
    }
    tensors.labels = { shape: [n], data: BigInt64Array.from(Array.from({ length: n }, (_, i) => BigInt(data.labels[chunk.start + i]))) };
    tensors.index = { shape: [n], data: BigInt64Array.from(Array.from({ length: n }, (_, i) => BigInt(chunk.start + i))) };
    await writeSafetensors(join(opts.outDir, chunk.file), tensors, { signature: sig, start: String(chunk.start), end: String(chunk.end) });
    written += n;
  }
  return written;
}

export interface FeatureCache {
  signature: Record<string, unknown>;
  count: number;
  labels: Int32Array;
  /** Features of one t × b for every image: [count, ...shape] flattened row-major per image. */
  features(t: number, b: number): Promise<{ data: Float32Array; shape: number[] }>;
}

/**
 * Opens a finished extraction (all chunks present and from the same settings), e.g. after several
 * shard workers, and writes/refreshes its manifest.json.
 */
export async function openFeatureCache(dir: string): Promise<FeatureCache> {
  const files = (await readdir(dir).catch(() => { throw new Error(`feature cache ${dir} does not exist`); })).filter((f) => /^chunk-\d+-\d+\.safetensors$/.test(f)).sort();
  if (!files.length) throw new Error(`${dir} holds no feature chunks; run \`difrep extract --out ${dir}\` first`);
  const first = await openSafetensors(join(dir, files[0]));
  const sig = first.metadata.signature;
  await first.close();
  const meta = JSON.parse(sig) as { count: number; chunkSize: number };
  const expected = planChunks(meta.count, meta.chunkSize);
  const missing = expected.filter((c) => !files.includes(c.file));
  if (missing.length) {
    throw new Error(`${dir} is incomplete: ${missing.length} of ${expected.length} chunks missing (first: ${missing[0].file}); run the remaining shards (or rerun extract to resume)`);
  }
  for (const f of files) {
    const s = await openSafetensors(join(dir, f));
    const same = s.metadata.signature === sig;
    await s.close();
    if (!same) throw new Error(`${join(dir, f)} comes from an extraction with other settings than ${files[0]}`);
  }
  const labels = new Int32Array(meta.count);
  for (const c of expected) {
    const s = await openSafetensors(join(dir, c.file));
    labels.set(Array.from(await s.read('labels')), c.start);
    await s.close();
  }
  await writeFileAtomic(join(dir, 'manifest.json'), JSON.stringify({ ...JSON.parse(sig), chunks: expected.map((c) => c.file), complete: true }, null, 2));
  return {
    signature: JSON.parse(sig),
    count: meta.count,
    labels,
    async features(t, b) {
      let out: Float32Array | null = null;
      let shape: number[] = [];
      for (const c of expected) {
        const s = await openSafetensors(join(dir, c.file));
        const key = featureKey(t, b);
        const info = s.info(key);
        if (!info) throw new Error(`${dir}: no features for t=${t}, b=${b} (this cache has ${s.keys().filter((k) => k.startsWith('t')).join(', ')})`);
        shape = info.shape.slice(1);
        const per = shape.reduce((p, d) => p * d, 1);
        out ??= new Float32Array(meta.count * per);
        out.set(await s.read(key), c.start * per);
        await s.close();
      }
      return { data: out!, shape };
    },
  };
}
