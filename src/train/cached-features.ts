// Cached feature maps in memory for the heads and the evaluation commands: every requested t × b of
// a feature cache (whose reader refuses non-finite values), optionally pooled on the CPU.
import { flagsFromJson, planUNet } from '../model/unet-config.ts';
import { featureKey, openFeatureCache, PIXEL_BLOCK } from './extract.ts';
import { type CacheSignature, showSetting } from './cache-signature.ts';
import type { FeatureArrays, FeatureMaps } from './fit.ts';

/**
 * Adaptive average pooling of cached per-image maps [C, H, W] to [C, p, p] on the CPU (PyTorch
 * windows). Only ever shrinks: asked for more than the map holds, adaptive pooling would repeat its
 * values (a 2×2 map "pooled" to 4×4) and report the result as what it is not, so that is a
 * RangeError. Maps already pooled from `sourceSize` (at extraction, or by an earlier call, which
 * the result records) pool again only where that equals pooling the full maps: when every window
 * so far was whole and equal (sourceSize a multiple of H) and p divides H. Otherwise the windows
 * differ (16 → 4 → 3 is not 16 → 3), a RangeError too; NaN: the source size is unknown.
 */
export function poolCached(f: FeatureMaps, count: number, p: number): FeatureMaps {
  const { data, shape } = f;
  if (!p || shape.length !== 3 || (shape[1] === p && shape[2] === p)) return f;
  const [C, H, W] = shape;
  if (p > H || p > W) throw new RangeError(`cannot pool ${H}×${W} maps to ${p}×${p}: pooling only shrinks a map; ask for a pool of at most ${Math.min(H, W)}`);
  const S = f.sourceSize;
  if (S !== undefined && S !== H && !(S % H === 0 && H % p === 0 && H === W)) {
    const from = Number.isNaN(S) ? 'maps of unknown size' : `${S}×${S}`;
    throw new RangeError(`these ${H}×${W} maps were pooled from ${from}; pooling them to ${p}×${p} would not equal pooling the full maps to ${p}×${p} (other windows): ask for a pool that divides ${H}`);
  }
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
  return { data: out, shape: [C, p, p], sourceSize: S ?? H };
}

/** A cache's features in memory, with the signature of the extraction that made them. */
export type CachedFeatures = FeatureArrays & { signature: CacheSignature };

/** Every t × b of the cache in `dir`, pooled to `pool` × `pool` when given (0: as cached). */
export async function loadCachedFeatures(dir: string, timesteps: number[], blocks: number[], pool = 0): Promise<CachedFeatures> {
  const cache = await openFeatureCache(dir, { verifyAll: false, writeManifest: false }); // features() verifies what it reads
  const features = new Map<string, FeatureMaps>();
  for (const t of timesteps) {
    for (const b of blocks) {
      const raw = await cache.features(t, b);
      try {
        features.set(featureKey(t, b), poolCached({ ...raw, sourceSize: extractedFrom(cache.signature, b, raw.shape) }, cache.count, pool));
      } catch (err) {
        if (!(err instanceof RangeError)) throw err;
        const advice = cache.signature.pool ? ` (it was extracted with --pool ${cache.signature.pool}), or extract again with --pool ${pool} (0 keeps the full maps)` : ' (the cache holds the full maps)';
        throw new RangeError(`${dir}: t ${t}, b ${b}: ${err.message}${advice}`);
      }
    }
  }
  return { features, labels: cache.labels, count: cache.count, signature: cache.signature };
}

/**
 * A head trained on one cache and scored on another needs both from the same network and noise
 * rule: a test cache of random weights scored against a trained one gave 5 % without a word.
 * Throws naming what differs.
 */
export function checkSameExtraction(train: CacheSignature, test: CacheSignature, trainDir: string, testDir: string): void {
  const show = (v: unknown) => showSetting(v, 60);
  if (train.classes !== test.classes) {
    // Labels are class indices in each cache's own list: with other lists they name other classes.
    const [a, b] = [recordedClasses(train, trainDir) ?? [], recordedClasses(test, testDir) ?? []];
    const only = (x: string[], y: string[]) => x.filter((c) => !y.includes(c));
    const detail = train.classes === undefined || test.classes === undefined
      ? `only ${train.classes === undefined ? testDir : trainDir} records its classes`
      : [only(a, b).length && `only the training cache has ${only(a, b).join(', ')}`, only(b, a).length && `only the test cache has ${only(b, a).join(', ')}`].filter(Boolean).join('; ') || 'the same names in another order';
    throw new Error(`the training cache ${trainDir} and the test cache ${testDir} number different classes (${detail}): a label is the class's place in its own split's sorted list, so both splits need the same class folders; extract both from folders with the same classes, by this difrep`);
  }
  const differ = (['config', 'checkpoint', 'noise', 'decoder', 'preprocess'] as const).filter((k) => JSON.stringify(train[k]) !== JSON.stringify(test[k]));
  if (differ.length) {
    throw new Error(`the training cache ${trainDir} and the test cache ${testDir} come from different extractions (${differ.map((k) => `${k} ${show(train[k])} against ${show(test[k])}`).join('; ')}): extract both splits with the same --model and --checkpoint, by this difrep`);
  }
}

/**
 * checkSameExtraction, and maps of one size for every t × b; returns a warning when both caches
 * hold images of the same split (the test scores are then training scores), else undefined.
 */
export function checkTrainTestCaches(train: CachedFeatures, test: CachedFeatures, trainDir: string, testDir: string): string | undefined {
  checkSameExtraction(train.signature, test.signature, trainDir, testDir);
  for (const [key, f] of train.features) {
    const g = test.features.get(key);
    if (g && g.shape.join() !== f.shape.join()) throw new Error(`features ${key} are [${f.shape}] in ${trainDir} and [${g.shape}] in ${testDir}: extract both with the same --pool`);
  }
  return sameSplitWarning(train.signature, test.signature, trainDir, testDir);
}

/** A warning when two caches' signatures say they hold images of the same split (or the same files), else undefined. */
export function sameSplitWarning(train: CacheSignature, test: CacheSignature, trainDir: string, testDir: string): string | undefined {
  const split = (sig: CacheSignature) => String(sig.dataset ?? '').replace(/\/per-class=\d+$/, '');
  if (split(train) !== '' && split(train) === split(test)) {
    return `warning: ${trainDir} and ${testDir} both hold images of ${split(train)}: the test scores are on training images`;
  }
  if (train.files !== undefined && train.files === test.files) {
    return `warning: ${trainDir} and ${testDir} hold the same image files: the test scores are on training images`;
  }
  return undefined;
}

/**
 * The size block b's maps had before extraction pooled them, read from the model config the cache
 * records (the CLI's provenance); undefined when the cached maps are the full ones; NaN when they
 * may have been pooled and the cache does not say from what.
 */
function extractedFrom(sig: CacheSignature, b: number, shape: number[]): number | undefined {
  if (!sig.pool || shape.length !== 3 || shape[1] < sig.pool) return undefined; // extract keeps maps smaller than its pool
  try {
    const plan = planUNet(flagsFromJson(String(sig.config)));
    const full = b === PIXEL_BLOCK ? plan.flags.image_size : plan.blocks[b - 1].size;
    return full === shape[1] ? undefined : full;
  } catch {
    return Number.NaN;
  }
}

/** The class names a cache in `where` records (its labels index them), or undefined when it records none. */
function recordedClasses(sig: CacheSignature, where: string): string[] | undefined {
  if (sig.classes === undefined) return undefined;
  let names: unknown;
  try {
    names = JSON.parse(String(sig.classes));
  } catch {
    names = undefined;
  }
  if (!Array.isArray(names)) throw new Error(`${where} records its classes as ${JSON.stringify(sig.classes).slice(0, 60)}, not a JSON list of names: extract it again`);
  return names;
}

/**
 * How many classes a head over the cache with signature `sig` (in `where`) scores: the number of
 * classes the cache records, or `given` (--classes), which must then be that number — a 10-way head
 * over a 3-class folder reported top-5 100 % with 7 classes that never occur. 10 (Fashion-MNIST's)
 * for a cache that records none and no `given`. A cache of one class is refused.
 */
export function headClasses(sig: CacheSignature, given: number | undefined, where: string): number {
  const names = recordedClasses(sig, where);
  if (!names) return given ?? 10;
  if (given !== undefined && given !== names.length) {
    const shown = names.length <= 12 ? names.join(', ') : `${names.slice(0, 12).join(', ')}, …`;
    throw new Error(`--classes ${given}, but ${where} records ${names.length} classes (${shown}): leave out --classes, or extract from a dataset with those classes`);
  }
  // One class: every prediction is right (top-1 100 %), a score that says nothing.
  if (names.length < 2) throw new Error(`${where} records ${names.length === 1 ? `one class (${names[0]})` : 'no class'}: classifying needs at least 2; extract from a folder with two or more class folders`);
  return names.length;
}

/**
 * The largest label must name a class: a cache with labels ≥ `classes` would train a head that can
 * never be right. `recordedBy`: the cache or run whose record gave `classes` (headClasses), where
 * giving --classes is refused: the labels and that record then disagree.
 */
export function checkLabels(data: FeatureArrays, classes: number, where: string, recordedBy?: string): void {
  let max = 0;
  let at = 0;
  for (let i = 0; i < data.count; i++) if (data.labels[i] > max) [max, at] = [data.labels[i], i];
  if (max < classes) return;
  if (recordedBy) throw new Error(`${where} has label ${max} at image ${at}, but ${recordedBy} records ${classes} classes: they are not of one dataset; extract the cache again`);
  throw new Error(`${where} has labels up to ${max}, but --classes is ${classes}: give --classes ${max + 1} or more`);
}

/**
 * The classes a head over the caches `train` (at `trainWhere`) and `test` scores (headClasses, from
 * the training cache's record or `given`), both splits' labels checked against them (checkLabels).
 */
export function splitClasses(train: CachedFeatures, test: FeatureArrays, given: number | undefined, trainWhere: string, testWhere: string): number {
  const classes = headClasses(train.signature, given, trainWhere);
  const recordedBy = recordedClasses(train.signature, trainWhere) ? trainWhere : undefined;
  checkLabels(train, classes, trainWhere, recordedBy);
  checkLabels(test, classes, testWhere, recordedBy);
  return classes;
}

/** Whether the cache in `dir` holds raw pixels (`difrep extract --features pixels`) rather than U-Net features. */
export async function isPixelCache(dir: string): Promise<boolean> {
  const { signature } = await openFeatureCache(dir, { verifyAll: false, writeManifest: false });
  return signature.blocks.length === 1 && signature.blocks[0] === PIXEL_BLOCK;
}
