// Cached feature maps in memory for the heads and the evaluation commands: every requested t × b of
// a feature cache (whose reader refuses non-finite values), optionally pooled on the CPU.
import { featureKey, openFeatureCache, PIXEL_BLOCK } from './extract.ts';
import type { FeatureArrays } from './fit.ts';

/**
 * Adaptive average pooling of cached per-image maps [C, H, W] to [C, p, p] on the CPU (PyTorch
 * windows). Only ever shrinks: asked for more than the map holds, adaptive pooling would repeat its
 * values (a 2×2 map "pooled" to 4×4) and report the result as what it is not, so that is a
 * RangeError.
 */
export function poolCached(data: Float32Array, count: number, shape: number[], p: number): { data: Float32Array; shape: number[] } {
  if (!p || shape.length !== 3 || (shape[1] === p && shape[2] === p)) return { data, shape };
  const [C, H, W] = shape;
  if (p > H || p > W) throw new RangeError(`cannot pool ${H}×${W} maps to ${p}×${p}: pooling only shrinks a map`);
  const out = new Float32Array(count * C * p * p);
  for (let n = 0; n < count; n++) {
    for (let c = 0; c < C; c++) {
      const base = (n * C + c) * H * W;
      for (let i = 0; i < p; i++) {
        const r0 = Math.floor((i * H) / p);
        const r1 = Math.ceil(((i + 1) * H) / p);
        for (let j = 0; j < p; j++) {
          const c0 = Math.floor((j * W) / p);
          const c1 = Math.ceil(((j + 1) * W) / p);
          let s = 0;
          for (let r = r0; r < r1; r++) for (let q = c0; q < c1; q++) s += data[base + r * W + q];
          out[((n * C + c) * p + i) * p + j] = s / ((r1 - r0) * (c1 - c0));
        }
      }
    }
  }
  return { data: out, shape: [C, p, p] };
}

/** Every t × b of the cache in `dir`, pooled to `pool` × `pool` when given (0: as cached). */
export async function loadCachedFeatures(dir: string, timesteps: number[], blocks: number[], pool = 0): Promise<FeatureArrays> {
  const cache = await openFeatureCache(dir, { verifyAll: false }); // features() verifies what it reads
  const features = new Map<string, { data: Float32Array; shape: number[] }>();
  for (const t of timesteps) {
    for (const b of blocks) {
      const raw = await cache.features(t, b);
      try {
        features.set(featureKey(t, b), poolCached(raw.data, cache.count, raw.shape, pool));
      } catch (err) {
        if (!(err instanceof RangeError)) throw err;
        const extracted = cache.signature.pool ? `it was extracted with --pool ${cache.signature.pool}` : 'it holds the full maps';
        throw new RangeError(`${dir}: t ${t}, b ${b}: ${err.message} (${extracted}); ask for a pool of at most ${Math.min(raw.shape[1], raw.shape[2])}, or extract again with a larger --pool (0 keeps the full maps)`);
      }
    }
  }
  return { features, labels: cache.labels, count: cache.count };
}

/** The largest label must name a class: a cache with labels ≥ `classes` would train a head that can never be right. */
export function checkLabels(data: FeatureArrays, classes: number, where: string): void {
  let max = 0;
  for (let i = 0; i < data.count; i++) max = Math.max(max, data.labels[i]);
  if (max >= classes) throw new Error(`${where} has labels up to ${max}, but --classes is ${classes}: give --classes ${max + 1} or more`);
}

/** Whether the cache in `dir` holds raw pixels (`difrep extract --features pixels`) rather than U-Net features. */
export async function isPixelCache(dir: string): Promise<boolean> {
  const { signature } = await openFeatureCache(dir, { verifyAll: false });
  return signature.blocks.length === 1 && signature.blocks[0] === PIXEL_BLOCK;
}
