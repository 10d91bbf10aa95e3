import t from 'tap';
import { ckaMatrix } from '../../src/train/eval/cka.ts';
import { type FeatureMatrix, knnClassify } from '../../src/train/eval/knn.ts';
import { randomNd, rng, testEngine } from '../helpers/check.ts';

const e = await testEngine();
const matrix = (n: number, d: number, seed: number): FeatureMatrix => ({ data: Float32Array.from(randomNd([n, d], seed).data), n, d });

t.test('kNN on features of the very images it was given is perfect', async (t) => {
  const train = matrix(40, 16, 1);
  const labels = Array.from({ length: 40 }, (_, i) => i % 10);
  const r = await knnClassify(e, train, labels, train, labels, { ks: [1, 20], classes: 10, chunk: 7 });
  t.equal(r[0].top1, 1, 'k = 1');
  t.equal(r[0].top5, 1);
  t.ok(r[1].top5 === 1, 'k = 20 still has the right class in its top 5');
});

t.test('kNN votes are weighted by exp(s / T), worked by hand', async (t) => {
  // Train: class 0 at angle 0°, class 1 at 60° and 70°. Query at 25°: cos 25° = 0.906 (class 0);
  // cos 35° = 0.819, cos 45° = 0.707 (class 1). k = 3, T = 0.1: class 0 gets e^9.06 = 8,604,
  // class 1 gets e^8.19 + e^7.07 = 3,607 + 1,176 = 4,783 → class 0. With T = 1: 2.47 vs 2.27 + 2.03 → class 1.
  const deg = (a: number) => [Math.cos((a * Math.PI) / 180), Math.sin((a * Math.PI) / 180)];
  const train: FeatureMatrix = { data: Float32Array.from([...deg(0), ...deg(60), ...deg(70)]), n: 3, d: 2 };
  const query: FeatureMatrix = { data: Float32Array.from(deg(25)), n: 1, d: 2 };
  const sharp = await knnClassify(e, train, [0, 1, 1], query, [0], { ks: [3], classes: 2, temperature: 0.1 });
  t.equal(sharp[0].top1, 1);
  const flat = await knnClassify(e, train, [0, 1, 1], query, [1], { ks: [3], classes: 2, temperature: 1 });
  t.equal(flat[0].top1, 1);
});

/** Feature-space linear CKA in float64 (the definition, independent of the Gram form). */
function ckaDirect(x: FeatureMatrix, y: FeatureMatrix): number {
  const centre = (m: FeatureMatrix) => {
    const out = Float64Array.from(m.data);
    for (let j = 0; j < m.d; j++) {
      let s = 0;
      for (let i = 0; i < m.n; i++) s += out[i * m.d + j];
      for (let i = 0; i < m.n; i++) out[i * m.d + j] -= s / m.n;
    }
    return out;
  };
  const cx = centre(x);
  const cy = centre(y);
  const frob2 = (a: Float64Array, da: number, b: Float64Array, db: number) => {
    let s = 0;
    for (let p = 0; p < da; p++) {
      for (let q = 0; q < db; q++) {
        let dot = 0;
        for (let i = 0; i < x.n; i++) dot += a[i * da + p] * b[i * db + q];
        s += dot * dot;
      }
    }
    return s;
  };
  return frob2(cy, y.d, cx, x.d) / Math.sqrt(frob2(cx, x.d, cx, x.d) * frob2(cy, y.d, cy, y.d));
}

t.test('linear CKA: 1 for a set with itself, invariant to rotation and scale, equal to the feature-space definition', async (t) => {
  const x = matrix(30, 6, 3);
  const y = matrix(30, 9, 4);
  // An orthogonal transform (a Givens rotation of dims 0 and 1) and a scale of x.
  const r = rng(5)() * Math.PI;
  const rot = Float32Array.from(x.data);
  for (let i = 0; i < 30; i++) {
    const a = x.data[i * 6];
    const b = x.data[i * 6 + 1];
    rot[i * 6] = 3 * (Math.cos(r) * a - Math.sin(r) * b);
    rot[i * 6 + 1] = 3 * (Math.sin(r) * a + Math.cos(r) * b);
    for (let j = 2; j < 6; j++) rot[i * 6 + j] = 3 * x.data[i * 6 + j];
  }
  const m = await ckaMatrix(e, [x, y, { data: rot, n: 30, d: 6 }]);
  t.ok(Math.abs(m[0][0] - 1) < 1e-5, `self ${m[0][0]}`);
  t.ok(Math.abs(m[0][2] - 1) < 1e-4, `rotated and scaled ${m[0][2]}`);
  t.ok(Math.abs(m[0][1] - ckaDirect(x, y)) < 1e-4, `${m[0][1]} vs ${ckaDirect(x, y)}`);
  t.equal(m[1][0], m[0][1], 'symmetric');
});
