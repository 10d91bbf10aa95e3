// Weighted k-nearest-neighbour classification on frozen features (paper Table 9; the protocol of
// the co-authors' earlier code): L2-normalised features, cosine similarity to every training
// feature, the k most similar vote for their class with weight exp(s / T), T = 0.1.
// Similarities are one GPU matmul per chunk of queries; top-k and voting run on the CPU.
import type { Engine } from '../../engine/engine.ts';
import { matmul } from '../../engine/ops/matmul.ts';
import { checkClassLabels } from './classification.ts';

export interface FeatureMatrix {
  /** Row-major [n, d]. */
  data: Float32Array;
  n: number;
  d: number;
}

export interface KnnOptions {
  ks?: number[];
  temperature?: number;
  classes: number;
  /** Queries per GPU matmul (bounded by the storage-binding limit). */
  chunk?: number;
}

export interface KnnResult {
  k: number;
  top1: number;
  top5: number;
}

/**
 * Rows scaled to unit L2 norm. An all-zero row has no direction: its cosine to everything is 0, so
 * its "neighbours" would just be the first k training rows; it is refused instead.
 */
export function l2NormalizeRows(m: FeatureMatrix, split: 'train' | 'test'): FeatureMatrix {
  const out = new Float32Array(m.data.length);
  for (let i = 0; i < m.n; i++) {
    let s = 0;
    for (let j = 0; j < m.d; j++) s += m.data[i * m.d + j] ** 2;
    if (!Number.isFinite(s)) throw new RangeError(`kNN: ${split} feature row ${i} holds a value that is not finite (of ${m.n} rows, ${m.d} dims)`);
    if (s === 0) {
      throw new RangeError(
        `kNN: ${split} feature row ${i} is all zero (of ${m.n} rows, ${m.d} dims), so it has no cosine neighbours; ` +
          'the features carry no signal for that image at this block/time step/pooling — pick another, or check the feature cache',
      );
    }
    const inv = 1 / Math.sqrt(s);
    for (let j = 0; j < m.d; j++) out[i * m.d + j] = m.data[i * m.d + j] * inv;
  }
  return { data: out, n: m.n, d: m.d };
}

export async function knnClassify(
  e: Engine, train: FeatureMatrix, trainLabels: ArrayLike<number>, test: FeatureMatrix, testLabels: ArrayLike<number>, opts: KnnOptions,
): Promise<KnnResult[]> {
  if (train.d !== test.d) throw new RangeError(`kNN: train features have ${train.d} dims, test features ${test.d}`);
  // A label outside 0..classes−1 would vote into nothing (a neighbour's vote lost) or never be hit.
  for (const [split, labels, n] of [['train', trainLabels, train.n], ['test', testLabels, test.n]] as const) {
    if (labels.length !== n) throw new RangeError(`kNN: ${n} ${split} feature rows but ${labels.length} ${split} labels`);
    checkClassLabels(labels, opts.classes, `kNN: ${split}`);
  }
  if (train.n === 0 || test.n === 0) throw new RangeError(`kNN: no ${train.n === 0 ? 'training' : 'test'} features (${train.n} training and ${test.n} test rows)`);
  const ks = opts.ks ?? [20, 200];
  const T = opts.temperature ?? 0.1;
  for (const k of ks) if (!Number.isInteger(k) || k < 1) throw new RangeError(`kNN: k ${k} is not a whole number ≥ 1`);
  // A k past the training set would vote with all of it under k's name.
  for (const k of ks) if (k > train.n) throw new RangeError(`kNN: k ${k} is more than the ${train.n} training features: choose k ≤ ${train.n}, or more training images`);
  if (!(T > 0 && Number.isFinite(T))) throw new RangeError(`kNN: temperature ${T} is not a number > 0 (votes weigh exp(s / T))`);
  const kMax = Math.max(...ks);
  const tr = l2NormalizeRows(train, 'train');
  const te = l2NormalizeRows(test, 'test');
  const chunk = opts.chunk ?? e.perBinding(4 * Math.max(train.n, train.d));
  const hits = ks.map(() => ({ top1: 0, top5: 0 }));
  if (4 * tr.n * tr.d > e.maxBindingBytes) {
    throw new RangeError(`kNN: the ${tr.n} × ${tr.d} training features bind ${4 * tr.n * tr.d} bytes at once, over this device's largest storage binding (${e.maxBindingBytes}): pool them smaller (--pool) or use fewer training images`);
  }
  const trainT = e.tensor(tr.data, [tr.n, tr.d], 'knn.train');
  for (let start = 0; start < te.n; start += chunk) {
    const rows = Math.min(chunk, te.n - start);
    const sims = await e.tidy(() => {
      const q = e.tensor(te.data.subarray(start * te.d, (start + rows) * te.d), [rows, te.d], 'knn.queries');
      return matmul(q, trainT, { transB: true });
    }).readAndDispose();
    for (let r = 0; r < rows; r++) {
      const row = sims.subarray(r * tr.n, (r + 1) * tr.n);
      // Indices of the kMax most similar training features, most similar first.
      const order = Array.from({ length: tr.n }, (_, i) => i).sort((a, b) => row[b] - row[a]).slice(0, kMax);
      // exp((s − s_max) / T) ranks the classes as exp(s / T) does but stays finite when s / T > 709.
      const sMax = row[order[0]];
      ks.forEach((k, ki) => {
        const votes = new Float64Array(opts.classes);
        // Which classes have a neighbour: a weight can round to 0 at a tiny T, the neighbour still counts.
        const voted = new Uint8Array(opts.classes);
        for (const i of order.slice(0, k)) {
          votes[trainLabels[i]] += Math.exp((row[i] - sMax) / T);
          voted[trainLabels[i]] = 1;
        }
        // A voted class whose weights all rounded to 0 (a tiny T) still ranks above the classes nobody voted for.
        const ranked = Array.from(votes.keys()).sort((a, b) => votes[b] - votes[a] || voted[b] - voted[a]);
        const y = testLabels[start + r];
        if (ranked[0] === y) hits[ki].top1++;
        // Only a class that got a vote is ranked. The reference code (the co-authors' knn_classifier,
        // like DINO's) ranks every class, zero-vote ones in whatever order its sort leaves ties, so
        // with k ≥ 5 its top-5 can count a class no neighbour voted for: this one is at most that,
        // the same whenever five classes get votes. With 5 classes or fewer every class is in the
        // reference's top 5, whatever the order, and here too (the CLI says so beside the number).
        if (opts.classes <= 5 || (voted[y] && ranked.slice(0, 5).includes(y))) hits[ki].top5++;
      });
    }
  }
  trainT.dispose();
  return ks.map((k, i) => ({ k, top1: hits[i].top1 / te.n, top5: hits[i].top5 / te.n }));
}
