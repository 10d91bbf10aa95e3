// Linear CKA between two feature sets of the same n examples (paper Figure 5):
//   CKA(X, Y) = ‖ỸᵀX̃‖²_F / (‖X̃ᵀX̃‖_F · ‖ỸᵀỸ‖_F), X̃, Ỹ column-centred,
// computed in Gram form, HSIC(K, L) = Σ (HKH) ⊙ (HLH) with K = XXᵀ (n × n), which stays small when
// the feature dimension is large. Columns are centred in float64 before the Gram (a GPU matmul);
// the double centring and the sums run in float64.
import type { Engine } from '../../engine/engine.ts';
import { matmul } from '../../engine/ops/matmul.ts';
import type { FeatureMatrix } from './knn.ts';

/**
 * X's columns centred in float64 and divided by their largest |value|, returned as float32 for the
 * GPU (undefined when every column is constant). CKA does not change when a set is scaled, and
 * scaled to at most 1 its Gram's entries (≤ d) neither overflow float32 nor, for features of 1e-22,
 * underflow to 0 (which read as "no variance", or as a CKA off in the second digit).
 */
function centreColumns(x: FeatureMatrix): Float32Array | undefined {
  const mean = new Float64Array(x.d);
  for (let i = 0; i < x.n; i++) for (let j = 0; j < x.d; j++) mean[j] += x.data[i * x.d + j];
  const centred = new Float64Array(x.data.length);
  let largest = 0;
  for (let i = 0; i < x.n; i++) {
    for (let j = 0; j < x.d; j++) {
      const v = x.data[i * x.d + j] - mean[j] / x.n;
      centred[i * x.d + j] = v;
      largest = Math.max(largest, Math.abs(v));
    }
  }
  return largest === 0 ? undefined : Float32Array.from(centred, (v) => v / largest);
}

/**
 * K = X̃·X̃ᵀ from the column-centred X̃, then double-centred (H K H, H = I − 11ᵀ/n) in float64.
 * H·XXᵀ·H = X̃X̃ᵀ exactly, but a float32 Gram of uncentred X loses the signal under a large common
 * offset (its entries grow as offset²·d), so the columns are centred first; H K H stays to remove
 * the mean that rounding X̃ to float32 leaves. Undefined for a set that is the same for every example.
 */
export async function centredGram(e: Engine, x: FeatureMatrix): Promise<Float64Array | undefined> {
  const bytes = 4 * x.n * Math.max(x.d, x.n);
  if (bytes > e.maxBindingBytes) {
    throw new RangeError(`CKA: ${x.n} examples of ${x.d} features bind ${bytes} bytes at once (the features or their ${x.n} × ${x.n} Gram), over this device's largest storage binding (${e.maxBindingBytes}): use fewer images or pool the features smaller (--pool)`);
  }
  const centred = centreColumns(x);
  if (!centred) return undefined;
  const k = await e.tidy(() => {
    const t = e.tensor(centred, [x.n, x.d], 'cka.features');
    return matmul(t, t, { transB: true });
  }).readAndDispose();
  const n = x.n;
  const out = Float64Array.from(k);
  const rowMean = new Float64Array(n);
  let total = 0;
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let j = 0; j < n; j++) s += out[i * n + j];
    rowMean[i] = s / n;
    total += s;
  }
  const mean = total / (n * n);
  // K is symmetric, so column means equal row means.
  for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) out[i * n + j] += mean - rowMean[i] - rowMean[j];
  return out;
}

/** Linear CKA from two double-centred Grams. */
export function ckaFromGrams(kc: Float64Array, lc: Float64Array): number {
  let kl = 0;
  let kk = 0;
  let ll = 0;
  for (let i = 0; i < kc.length; i++) {
    kl += kc[i] * lc[i];
    kk += kc[i] * kc[i];
    ll += lc[i] * lc[i];
  }
  return kl / Math.sqrt(kk * ll);
}

/**
 * CKA between every pair of feature sets (all of the same n ≥ 3 examples): a symmetric matrix.
 * `names` (one per set) name a set in errors. A set that is the same for every example has a zero
 * centred Gram, and its CKA with anything is 0/0: refused.
 */
export async function ckaMatrix(e: Engine, sets: FeatureMatrix[], names?: readonly string[]): Promise<number[][]> {
  const n = sets[0]?.n;
  for (const s of sets) if (s.n !== n) throw new RangeError(`CKA: every feature set needs the same examples (${s.n} vs ${n})`);
  // With 2 examples every centred Gram is a multiple of [[1, −1], [−1, 1]]: every CKA would be 1.
  if (sets.length && n < 3) throw new RangeError(`CKA: ${n} example${n === 1 ? '' : 's'}; it compares how examples relate to each other, so it needs at least 3 (with 2, any two sets score 1)`);
  const grams: Float64Array[] = [];
  for (const [i, s] of sets.entries()) {
    const name = names?.[i] ?? `number ${i + 1}`;
    const bad = s.data.findIndex((v) => !Number.isFinite(v));
    if (bad >= 0) throw new RangeError(`CKA: feature set ${name} holds ${s.data[bad]} (example ${Math.floor(bad / s.d)}, dimension ${bad % s.d}): its CKA is undefined`);
    const gram = await centredGram(e, s);
    if (!gram) throw new RangeError(`CKA: feature set ${name} is the same for all ${n} examples (no variance), so its CKA with any set is undefined (0/0)`);
    grams.push(gram);
  }
  const m = grams.map(() => new Array<number>(grams.length).fill(0));
  for (let i = 0; i < grams.length; i++) {
    for (let j = i; j < grams.length; j++) m[i][j] = m[j][i] = ckaFromGrams(grams[i], grams[j]);
  }
  return m;
}
