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

t.test('kNN top-5 credits only classes that got a vote: with k = 1 it is the one neighbour\'s class', async (t) => {
  // One query, nearest to the class-9 row, then the class-8 row. k = 1: only class 9 has a vote, so
  // label 0 (a zero-vote class the stable sort would list second) is a top-5 miss. k = 2: classes
  // 9 and 8 voted; label 0 still misses. Labels [0, 9, 8] → top-5 1/3 at k = 1, 2/3 at k = 2.
  const train: FeatureMatrix = { data: Float32Array.from([1, 0, 0, 1]), n: 2, d: 2 };
  const query: FeatureMatrix = { data: Float32Array.from([1, 0.1, 1, 0.1, 1, 0.1]), n: 3, d: 2 };
  const [k1, k2] = await knnClassify(e, train, [9, 8], query, [0, 9, 8], { ks: [1, 2], classes: 10 });
  t.same([k1.top1, k1.top5], [1 / 3, 1 / 3], 'k = 1');
  t.same([k2.top1, k2.top5], [1 / 3, 2 / 3], 'k = 2');
});

// With 5 classes or fewer every label is in the top 5 of the reference's ranking of all classes;
// top-5 counted only the voted ones, 2/3 here, beside the CLI's "any label is in the top 5".
t.test('kNN top-5 over 5 classes or fewer counts every label, as the reference ranks all classes', async (t) => {
  const train: FeatureMatrix = { data: Float32Array.from([1, 0, 0, 1]), n: 2, d: 2 };
  const query: FeatureMatrix = { data: Float32Array.from([1, 0.1, 1, 0.1, 1, 0.1]), n: 3, d: 2 };
  const [r] = await knnClassify(e, train, [2, 1], query, [0, 2, 1], { ks: [1], classes: 3 });
  t.same([r.top1, r.top5], [1 / 3, 1]);
});

t.test('kNN top-5 ranks a class with a neighbour above the classes without, when its weight rounds to 0', async (t) => {
  // Training rows (1, 0) of class 5 and (0.6, 0.8) of class 9; the query (1, 0) has label 9; k = 2.
  // At T = 1e-4 class 9's weight exp((0.6 − 1) / 1e-4) = exp(−4000) is 0 even in float64, yet it has
  // a neighbour: it ranks second of ten, a top-5 hit (classes 0–3, unvoted, tie with it at 0).
  const train: FeatureMatrix = { data: Float32Array.from([1, 0, 0.6, 0.8]), n: 2, d: 2 };
  const query: FeatureMatrix = { data: Float32Array.from([1, 0]), n: 1, d: 2 };
  const [r] = await knnClassify(e, train, [5, 9], query, [9], { ks: [2], classes: 10, temperature: 1e-4 });
  t.same([r.top1, r.top5], [0, 1]);
});

t.test('kNN vote weights stay finite at a small temperature (s / T > 709)', async (t) => {
  // Query at 0°; class 0 has two neighbours at cosine 0.99, class 1 one at cosine 0.995; k = 3.
  // Weights relative to the best neighbour, exp((s − 0.995) / T): T = 0.01 → class 0 gets
  // 2·e^−0.5 = 1.213 against 1 (class 0 wins); T = 0.001 → 2·e^−5 = 0.0135 against 1 (class 1 wins),
  // where exp(s / T) = exp(990) and exp(995) are both Infinity and would tie.
  const at = (c: number, sign: number) => [c, sign * Math.sqrt(1 - c * c)];
  const train: FeatureMatrix = { data: Float32Array.from([...at(0.99, 1), ...at(0.99, -1), ...at(0.995, 1)]), n: 3, d: 2 };
  const query: FeatureMatrix = { data: Float32Array.from([1, 0]), n: 1, d: 2 };
  const warm = await knnClassify(e, train, [0, 0, 1], query, [0], { ks: [3], classes: 2, temperature: 0.01 });
  t.equal(warm[0].top1, 1, 'T = 0.01: class 0');
  const cold = await knnClassify(e, train, [0, 0, 1], query, [1], { ks: [3], classes: 2, temperature: 0.001 });
  t.equal(cold[0].top1, 1, 'T = 0.001: class 1');
});

// With no training rows every class tied at 0 votes and class 0 "won" (top-1 0.6 on labels
// [0, 0, 1, 2, 0]); k = 200 over 2 training rows voted with both and said k = 200.
t.test('kNN refuses empty feature sets and a k over the training set', async (t) => {
  const none: FeatureMatrix = { data: new Float32Array(0), n: 0, d: 2 };
  const two: FeatureMatrix = { data: Float32Array.from([1, 0, 0, 1]), n: 2, d: 2 };
  await t.rejects(knnClassify(e, none, [], two, [0, 1], { ks: [1], classes: 3 }), /kNN: no training features \(0 training and 2 test rows\)/);
  await t.rejects(knnClassify(e, two, [0, 1], none, [], { ks: [1], classes: 3 }), /kNN: no test features/);
  await t.rejects(knnClassify(e, two, [0, 1], two, [0, 1], { ks: [1, 200], classes: 3 }), /kNN: k 200 is more than the 2 training features/);
});

t.test('kNN refuses an all-zero feature row, naming the split and the row', async (t) => {
  const train: FeatureMatrix = { data: Float32Array.from([1, 0, 0, 1, 0, 0]), n: 3, d: 2 };
  const query: FeatureMatrix = { data: Float32Array.from([1, 0, 0, 0]), n: 2, d: 2 };
  const good: FeatureMatrix = { data: Float32Array.from([1, 0]), n: 1, d: 2 };
  await t.rejects(knnClassify(e, train, [0, 1, 1], good, [0], { ks: [1], classes: 2 }), /train feature row 2 is all zero/);
  await t.rejects(knnClassify(e, { ...train, n: 2, data: train.data.subarray(0, 4) }, [0, 1], query, [0, 1], { ks: [1], classes: 2 }), /test feature row 1 is all zero/);
});

t.test('kNN refuses labels that name no class or do not match the rows (a vote was lost, a miss divided in)', async (t) => {
  // Worked by hand: two class-12 neighbours beside the query, two class-3 ones further; with
  // classes 10 the class-12 votes fell outside the tally and class 3 won.
  const train: FeatureMatrix = { data: Float32Array.from([1, 0.01, 1, 0.02, 0.5, 1, 0.4, 1]), n: 4, d: 2 };
  const query: FeatureMatrix = { data: Float32Array.from([1, 0]), n: 1, d: 2 };
  t.same(await knnClassify(e, train, [12, 12, 3, 3], query, [12], { ks: [4], classes: 13 }), [{ k: 4, top1: 1, top5: 1 }], 'classes 13: right');
  await t.rejects(knnClassify(e, train, [12, 12, 3, 3], query, [12], { ks: [4], classes: 10 }), /kNN: train label of image 0 is 12, not a class in 0\.\.9 \(classes: 10\)/);
  await t.rejects(knnClassify(e, train, [0, 0, 1, 1], query, [-1], { ks: [4], classes: 2 }), /kNN: test label of image 0 is -1, not a class in 0\.\.1/);
  await t.rejects(knnClassify(e, train, [0, 0, 1, 1.5], query, [0], { ks: [4], classes: 2 }), /train label of image 3 is 1\.5/);
  await t.rejects(knnClassify(e, train, [0, 0, 1], query, [0], { ks: [4], classes: 2 }), /kNN: 4 train feature rows but 3 train labels/);
  await t.rejects(knnClassify(e, train, [0, 0, 1, 1], { data: Float32Array.from([1, 0, 0, 1]), n: 2, d: 2 }, [0], { ks: [4], classes: 2 }), /kNN: 2 test feature rows but 1 test labels/);
});

t.test('kNN refuses a k or temperature that votes nothing sensible, and features that are not finite', async (t) => {
  const train: FeatureMatrix = { data: Float32Array.from([1, 0, 0.9, 0.1, 0, 1, 0.1, 0.9]), n: 4, d: 2 };
  const query: FeatureMatrix = { data: Float32Array.from([1, 0.05]), n: 1, d: 2 };
  const labels = [1, 1, 0, 0];
  const cases: [{ ks?: number[]; temperature?: number }, RegExp][] = [
    [{ ks: [0] }, /k 0 is not a whole number ≥ 1/], [{ ks: [2.5] }, /k 2\.5 is not/], [{ temperature: 0 }, /temperature 0 is not a number > 0/], [{ temperature: -1 }, /temperature -1 is not/],
  ];
  for (const [opts, message] of cases) await t.rejects(knnClassify(e, train, labels, query, [1], { classes: 2, ks: [2], ...opts }), message);
  const nan = { ...train, data: Float32Array.from([1, 0, Number.NaN, 0.1, 0, 1, 0.1, 0.9]) };
  await t.rejects(knnClassify(e, nan, labels, query, [1], { ks: [2], classes: 2 }), /kNN: train feature row 1 holds a value that is not finite/);
  await t.rejects(knnClassify(e, train, labels, { ...query, data: Float32Array.from([Number.POSITIVE_INFINITY, 0]) }, [1], { ks: [2], classes: 2 }), /test feature row 0 holds a value that is not finite/);
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

t.test('linear CKA keeps its precision under a large common offset (1000 + features)', async (t) => {
  // Y = X + 0.5·noise, both shifted by 1000: CKA ignores the shift, so it matches the float64 definition.
  const n = 200;
  const d = 64;
  const base = randomNd([n, d], 6).data;
  const noise = randomNd([n, d], 7).data;
  const x: FeatureMatrix = { data: Float32Array.from(base, (v) => 1000 + v), n, d };
  const y: FeatureMatrix = { data: Float32Array.from(base, (v, i) => 1000 + v + 0.5 * noise[i]), n, d };
  const m = await ckaMatrix(e, [x, y]);
  const ref = ckaDirect(x, y);
  t.ok(Math.abs(m[0][1] - ref) < 1e-4, `${m[0][1]} vs ${ref}`);
  t.ok(Math.abs(m[0][0] - 1) < 1e-5, `self ${m[0][0]}`);
});

t.test('linear CKA does not depend on the features\' scale, even where their float32 Gram would underflow or overflow', async (t) => {
  // CKA(s·X, Y) = CKA(X, Y) for every s > 0 (the definition's ratio of Frobenius norms). Features of
  // 1e-22 have Gram entries near 1e-44, below float32's smallest value; of 1e20, entries past its largest.
  const x = randomNd([30, 6], 31);
  const y = randomNd([30, 4], 32);
  const want = ckaDirect({ data: Float32Array.from(x.data), n: 30, d: 6 }, { data: Float32Array.from(y.data), n: 30, d: 4 });
  for (const scale of [1e-22, 1e-30, 1e20]) {
    const m = await ckaMatrix(e, [{ data: Float32Array.from(x.data, (v) => v * scale), n: 30, d: 6 }, { data: Float32Array.from(y.data), n: 30, d: 4 }]);
    t.ok(Math.abs(m[0][1] - want) < 1e-5, `features × ${scale}: ${m[0][1]} vs ${want}`);
  }
});

t.test('linear CKA refuses what makes it 0/0 or always 1: a set that is the same for every example, fewer than 3 examples', async (t) => {
  const x: FeatureMatrix = { data: Float32Array.from({ length: 12 }, (_, i) => Math.sin(i)), n: 4, d: 3 };
  const constant: FeatureMatrix = { data: Float32Array.from({ length: 12 }, (_, i) => [1, 2, 3][i % 3]), n: 4, d: 3 };
  await t.rejects(ckaMatrix(e, [x, constant], ['t90 b2', 't90 b3']), /CKA: feature set t90 b3 is the same for all 4 examples \(no variance\), so its CKA with any set is undefined/);
  await t.rejects(ckaMatrix(e, [{ data: x.data.subarray(0, 3), n: 1, d: 3 }]), /CKA: 1 example; .* needs at least 3/);
  const nan = Float32Array.from(x.data);
  nan[7] = Number.NaN;
  await t.rejects(ckaMatrix(e, [x, { ...x, data: nan }], ['a', 'b']), /CKA: feature set b holds NaN \(example 2, dimension 1\): its CKA is undefined/);
  // Two examples: any two sets (here unrelated ones) would score 1.
  await t.rejects(ckaMatrix(e, [{ data: x.data.subarray(0, 6), n: 2, d: 3 }, { data: Float32Array.from([5, -1, 2, 7]), n: 2, d: 2 }]), /CKA: 2 examples; .* needs at least 3 \(with 2, any two sets score 1\)/);
});

t.test('kNN and CKA leave nothing on the GPU (every chunk\'s similarities and every Gram were kept: 128 MiB a chunk at scale)', async (t) => {
  const train = matrix(60, 8, 21);
  const test = matrix(30, 8, 22);
  const labels = Array.from({ length: 60 }, (_, i) => i % 3);
  const live = e.memoryStats().liveBytes;
  await knnClassify(e, train, labels, test, labels.slice(0, 30), { ks: [1, 5], classes: 3, chunk: 7 });
  await ckaMatrix(e, [train, matrix(60, 5, 23)]);
  t.equal(e.memoryStats().liveBytes, live);
});
