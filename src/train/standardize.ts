// Feature standardisation for the linear probe and kNN (the miniature issue's protocol, MAE-style
// BatchNorm without affine): per feature dimension, the training split's mean and unbiased
// standard deviation (+ 1e-6), applied to the training and the test features alike.
import type { FeatureArrays, FeatureMaps } from './fit.ts';

export interface Standardizer {
  mean: Float64Array;
  std: Float64Array;
}

const EPS = 1e-6;

/** Statistics of `data` ([count, d] row-major), accumulated in float64. */
export function fitStandardizer(data: Float32Array, count: number): Standardizer {
  if (count < 2) throw new RangeError(`standardisation needs at least 2 training images, got ${count}`);
  const d = data.length / count;
  const mean = new Float64Array(d);
  for (let n = 0; n < count; n++) for (let j = 0; j < d; j++) mean[j] += data[n * d + j];
  for (let j = 0; j < d; j++) mean[j] /= count;
  const std = new Float64Array(d);
  for (let n = 0; n < count; n++) {
    for (let j = 0; j < d; j++) {
      const x = data[n * d + j] - mean[j];
      std[j] += x * x;
    }
  }
  for (let j = 0; j < d; j++) std[j] = Math.sqrt(std[j] / (count - 1)) + EPS;
  return { mean, std };
}

/** (x − mean) / std per dimension, as a new array. */
export function applyStandardizer(s: Standardizer, data: Float32Array): Float32Array {
  const d = s.mean.length;
  if (data.length % d !== 0) throw new RangeError(`standardisation: ${data.length} values are not rows of the ${d} dimensions the statistics were computed on`);
  const out = new Float32Array(data.length);
  for (let i = 0; i < data.length; i++) out[i] = (data[i] - s.mean[i % d]) / s.std[i % d];
  return out;
}

/**
 * Every feature set of both splits standardised with the training split's statistics (new arrays;
 * shapes kept), and a warning when some dimension is constant over the training split: its std is
 * then the 1e-6 alone, so a test image that differs there gets a value up to 1e6 times larger,
 * which can swamp every other dimension (a small class-balanced split of pixels has a few). A
 * feature set constant in every dimension is refused: standardised, it is all zero.
 */
export function standardizeSplits(train: FeatureArrays, test: FeatureArrays): { train: FeatureArrays; test: FeatureArrays; warning?: string; constant: string[] } {
  const trainFeatures = new Map<string, FeatureMaps>();
  const testFeatures = new Map<string, FeatureMaps>();
  const constant: string[] = [];
  for (const [key, f] of train.features) {
    const s = fitStandardizer(f.data, train.count);
    const n = s.std.reduce((c, v) => c + (v === EPS ? 1 : 0), 0);
    if (n === s.std.length) {
      throw new RangeError(`standardisation: all ${n} dimensions of the features ${key} are constant over the ${train.count} training images, so every standardised training feature would be 0 (nothing to learn or compare); check the feature cache, use other training images, or leave out --standardize`);
    }
    if (n) constant.push(`${key}: ${n} of ${s.std.length}`);
    trainFeatures.set(key, { ...f, data: applyStandardizer(s, f.data) });
    const g = test.features.get(key);
    if (g) testFeatures.set(key, { ...g, data: applyStandardizer(s, g.data) });
  }
  return { train: { ...train, features: trainFeatures }, test: { ...test, features: testFeatures }, warning: constantDimensionsWarning(train.count, constant), constant };
}

/** The warning for feature dimensions constant over `count` training images (`constant`: "key: n of D" each), or undefined for none. */
export function constantDimensionsWarning(count: number, constant: readonly string[]): string | undefined {
  return constant.length
    ? `warning: feature dimensions constant over the ${count} training images (${constant.join('; ')}): standardised by the 1e-6 alone, a test image that differs there gets values up to 1e6 times larger; use more training images, or leave out --standardize`
    : undefined;
}
