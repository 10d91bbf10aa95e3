import t from 'tap';
import { mergeBroadcastDims } from '../../src/engine/ops/elementwise.ts';
import { ops } from '../../src/index.ts';
import { gradCheck, maxRelError, randomNd, testEngine, upload } from '../helpers/check.ts';
import { broadcast, map, type Nd, unaryRef } from '../helpers/reference.ts';

const e = await testEngine();

const unaryCases: [string, (x: any) => any, number, number, number][] = [
  // name, op, alpha, input lo, hi
  ['relu', ops.relu, 0, -2, 2],
  ['silu', ops.silu, 0, -6, 6],
  ['gelu', ops.gelu, 0, -5, 5],
  ['exp', ops.exp, 0, -3, 3],
  ['log', ops.log, 0, 0.1, 4],
  ['sqrt', ops.sqrt, 0, 0.1, 4],
  ['square', ops.square, 0, -2, 2],
  ['neg', ops.neg, 0, -2, 2],
  ['clampSymmetric', (x) => ops.clampSymmetric(x, 1.5), 1.5, -3, 3],
  ['clampMin', (x) => ops.clampMin(x, 0.5), 0.5, -2, 2],
  ['tanh', ops.tanh, 0, -4, 4],
  ['logSigmoid', ops.logSigmoid, 0, -30, 30],
  ['log1mexp', ops.log1mexp, 0, 0.01, 5],
];

t.test('tanh stays finite and saturates far out (±50, ±1e4: an (e²ˣ − 1)/(e²ˣ + 1) tanh gives NaN there)', async (t) => {
  const x = e.tensor(Float32Array.from([-1e4, -50, -20, 20, 50, 1e4]), [6]);
  t.same(Array.from(await ops.tanh(x).read()), [-1, -1, -1, 1, 1, 1]);
});

// Lavapipe's tanh is off by about 3e-8 absolute: 19 % of tanh(1e-7). Expected: tanh in float64.
t.test('tanh keeps its relative precision near 0 (1e-20 to 0.2, both signs)', async (t) => {
  const xs = [1e-20, 1e-7, 1e-5, 1e-3, 0.01, 0.0999, 0.1, 0.2].flatMap((v) => [v, -v]);
  const y = await ops.tanh(e.tensor(Float32Array.from(xs), [xs.length])).read();
  // Each value against its own magnitude (maxRelError divides by the largest).
  const err = Math.max(...xs.map((v, i) => Math.abs(y[i] - Math.tanh(Math.fround(v))) / Math.abs(Math.tanh(Math.fround(v)))));
  t.ok(err < 1e-6, `worst relative error ${err.toExponential(2)}: ${Array.from(y.slice(0, 8))}`);
});

// Lavapipe's log read subnormals as if their exponent field were that of 2⁻¹²⁷: log(1.4e-45) was −88.03.
t.test('log of subnormals, the smallest normal and ordinary values matches float64', async (t) => {
  const xs = Float32Array.from([1.4e-45, 1e-40, 1e-39, 1.1754942e-38, 1.17549435e-38, 1e-30, 0.5, 3]);
  const y = await ops.log(e.tensor(xs, [xs.length])).read();
  const err = Math.max(...Array.from(xs, (v, i) => Math.abs(y[i] - Math.log(v)) / Math.abs(Math.log(v))));
  t.ok(err < 1e-6, `worst relative error ${err.toExponential(2)}: ${Array.from(y.slice(0, 4))}`);
});

// Each value against its own magnitude, float64 the expectation: log(σ(x)) and log(1 − e^−x) as
// written lose every digit in a tail (log σ(30) read as log(1) = 0, log(1 − e^−1e-6) as log(1e-6 ± 6e-8)).
t.test('logSigmoid and log1mexp keep their relative precision in the tails and across their branch points', async (t) => {
  const cases: [string, (x: any) => any, number[]][] = [
    ['logSigmoid', ops.logSigmoid, [-200, -30, -1, -1e-3, 0, 1e-3, 1, 2.9, 3.1, 15, 30, 80, 85]],
    ['log1mexp', ops.log1mexp, [1e-30, 1e-7, 1e-3, 0.1, 0.3499, 0.35, 0.3501, 0.69, 1, 2.99, 3.01, 10, 16, 30]],
  ];
  for (const [name, op, xs] of cases) {
    for (const n of [xs.length, xs.length + (4 - (xs.length % 4)) % 4]) {
      const x32 = Float32Array.from({ length: n }, (_, i) => xs[i % xs.length]);
      const y = await op(e.tensor(x32, [n])).read();
      // Relative to each bound: 2e-6 plus WGSL's accuracy of exp(x), 3 + 2·|x| ulp (lavapipe's
      // exp(−85) is 3e-6 off, which logSigmoid(85) ≈ −e^−85 inherits).
      const err = Math.max(...Array.from(x32, (v, i) => {
        const want = unaryRef[name](v, 0);
        return Math.abs(y[i] - want) / Math.abs(want) / (2e-6 + (3 + 2 * Math.abs(v)) * 2 ** -23);
      }));
      t.ok(err < 1, `${name} of ${n} values: worst error ${err.toFixed(2)} of its bound: ${Array.from(y)}`);
    }
  }
});

// PyTorch keeps NaN through relu, clamp and tanh; WGSL's max and clamp may return the other
// operand (lavapipe gave relu(NaN) = 0, clamp(NaN, −1, 1) = −1): a diverged sample or feature
// became finite and unnoticed.
t.test('relu, clampSymmetric, clampMin and tanh keep NaN (and scalar and vec4 kernels agree)', async (t) => {
  for (const n of [3, 4]) {
    const x = e.tensor(Float32Array.from({ length: n }, (_, i) => (i === 1 ? 2 : Number.NaN)), [n]);
    for (const [name, y] of [['relu', ops.relu(x)], ['clampSymmetric', ops.clampSymmetric(x, 1)], ['clampMin', ops.clampMin(x, 1e-12)], ['tanh', ops.tanh(x)]] as const) {
      const got = Array.from(await y.read());
      t.ok(got.every((v, i) => (i === 1 ? Number.isFinite(v) : Number.isNaN(v))), `${name} of ${n} values: ${got}`);
    }
  }
});

// PyTorch's clamp passes the gradient where min ≤ x ≤ max, bounds included; abs(x) < alpha dropped it there.
t.test('clampSymmetric passes the gradient at the bounds, as torch.clamp does', async (t) => {
  const x = e.tensor([-0.5, 0.5, 1, 0, -2], [5]);
  x.requiresGrad = true;
  e.tape.backward(ops.sum(ops.clampSymmetric(x, 0.5)));
  t.same(Array.from(await x.grad!.read()), [1, 1, 0, 1, 0]);
  x.dispose();
});

// PyTorch's relu backward is relu(x) ≤ 0 ? 0 : dy: a NaN input passes dy on (x > 0 ? dy : 0 gave 0).
t.test('relu passes the gradient at a NaN input, and none at ±0 or below, as PyTorch does', async (t) => {
  for (const n of [3, 4]) {
    const x = e.tensor(Float32Array.from([Number.NaN, -0, 0, 1].slice(0, n)), [n]);
    x.requiresGrad = true;
    e.tape.backward(ops.relu(x), e.tensor([2, 3, 4, 5].slice(0, n), [n]));
    t.same(Array.from(await x.grad!.read()), [2, 0, 0, 5].slice(0, n), `${n} values`);
    x.dispose();
  }
});

// PyTorch's relu is x < 0 ? 0 : x, so relu(−0) = −0 (1/relu(−0) = −inf); max(−0, 0) gave +0.
t.test('relu keeps the sign of zero (−0 → −0, +0 → +0) in scalar and vec4 kernels', async (t) => {
  for (const n of [3, 4]) {
    const xs = Float32Array.from({ length: n }, (_, i) => (i % 2 === 0 ? -0 : 0));
    const got = Array.from(await ops.relu(e.tensor(xs, [n])).read());
    t.ok(got.every((v, i) => Object.is(v, xs[i])), `relu of ${n} values: ${got.map((v) => (Object.is(v, -0) ? '-0' : v))}`);
  }
});

for (const [name, op, alpha, lo, hi] of unaryCases) {
  // Counts that divide by 4 run the vec4 kernels, the others the scalar ones.
  t.test(`${name} forward matches float64 on 1, 256, 257, 70000 and 70001 elements`, async (t) => {
    for (const [n, seed] of [[1, 1], [256, 12], [257, 2], [70000, 13], [70001, 3]]) {
      const x = randomNd([n], seed, lo, hi);
      const y = op(upload(e, x));
      const err = maxRelError(await y.read(), map(x, (v) => unaryRef[name](v, alpha)).data);
      t.ok(err < 1e-5, `n=${n}: max rel err ${err.toExponential(2)}`);
    }
  });
  t.test(`${name} backward matches finite differences on 3x5x7 and 4x5x7 inputs`, async (t) => {
    for (const shape of [[3, 5, 7], [4, 5, 7]]) {
      const x = randomNd(shape, 11, lo, hi);
      const { worst } = await gradCheck(e, op, (a: Nd) => map(a, (v) => unaryRef[name](v, alpha)), [x]);
      t.ok(worst < 1e-3, `${shape}: max rel err ${worst.toExponential(2)}`);
    }
  });
}

// Each invocation takes VALUES_PER_INVOCATION (4) loads a workgroup of 256 apart; a run that ends
// inside a workgroup's fourth step takes its last loads one at a time. 8,096 values are 2,024 vec4
// loads (the last workgroup 1,000 of 1,024), 2,025 are as many single loads (the last 1,001).
// Expected: float64; neg's input gradient under Σ, −1 everywhere.
t.test('elementwise kernels reach every value of runs that end inside an invocation\'s last step', async (t) => {
  for (const n of [8096, 2025]) {
    const a = randomNd([n], 21, -2, 2);
    const b = randomNd([n], 22, 0.5, 2);
    const x = upload(e, a, true);
    const y = ops.neg(x);
    t.ok(maxRelError(await y.read(), map(a, (v) => -v).data) === 0, `n=${n}: neg`);
    t.ok(maxRelError(await ops.mul(x, upload(e, b)).read(), broadcast(a, b, (p, q) => p * q).data) < 1e-6, `n=${n}: mul`);
    const rows = n % 16 === 0 ? [n / 16, 16] : [n, 1];
    const row = randomNd([1, rows[1]], 23, 0.5, 2);
    const a2 = { data: a.data, shape: rows };
    t.ok(maxRelError(await ops.add(upload(e, a2), upload(e, row)).read(), broadcast(a2, row, (p, q) => p + q).data) < 1e-6, `n=${n}: add of a broadcast row`);
    e.tape.backward(ops.sum(y));
    t.same(Array.from(await x.grad!.read()), new Array(n).fill(-1), `n=${n}: neg's input gradient`);
  }
});

t.test('scale and addScalar use their scalar', async (t) => {
  const x = randomNd([33], 4);
  t.ok(maxRelError(await ops.scale(upload(e, x), -2.5).read(), map(x, (v) => -2.5 * v).data) < 1e-6);
  t.ok(maxRelError(await ops.addScalar(upload(e, x), 3).read(), map(x, (v) => v + 3).data) < 1e-6);
  const { worst } = await gradCheck(e, (a) => ops.scale(a, -2.5), (a: Nd) => map(a, (v) => -2.5 * v), [x]);
  t.ok(worst < 1e-3);
});

const binaryCases: [string, (a: any, b: any) => any, (x: number, y: number) => number][] = [
  ['add', ops.add, (x, y) => x + y],
  ['sub', ops.sub, (x, y) => x - y],
  ['mul', ops.mul, (x, y) => x * y],
  ['div', ops.div, (x, y) => x / y],
];
const shapePairs: [number[], number[]][] = [
  [[4, 33], [4, 33]],
  [[3, 11], [3, 11]],
  [[2, 3, 5], [5]],
  [[2, 1, 5], [1, 4, 1]],
  [[1], [3, 7]],
  [[6, 1], [6, 9]],
  // Innermost dimension divisible by 4: vec4 reads, repeated (splat) where an operand is broadcast.
  [[2, 3, 8], [2, 3, 1]],
  [[3, 1], [3, 8]],
  [[2, 4], [4]],
  [[2, 3, 4, 4], [1, 3, 1, 1]],
];

for (const [name, op, f] of binaryCases) {
  t.test(`${name} forward broadcasts like NumPy`, async (t) => {
    for (const [sa, sb] of shapePairs) {
      const a = randomNd(sa, 5, 0.5, 2);
      const b = randomNd(sb, 6, 0.5, 2);
      const y = op(upload(e, a), upload(e, b));
      const ref = broadcast(a, b, f);
      t.same(y.shape, ref.shape, `shape of ${sa} ∘ ${sb}`);
      t.ok(maxRelError(await y.read(), ref.data) < 1e-6, `${sa} ∘ ${sb}`);
    }
  });
  t.test(`${name} backward reduces over broadcast axes (finite differences)`, async (t) => {
    for (const [sa, sb] of shapePairs) {
      const a = randomNd(sa, 8, 0.5, 2);
      const b = randomNd(sb, 9, 0.5, 2);
      const { worst } = await gradCheck(e, op, (x: Nd, y: Nd) => broadcast(x, y, f), [a, b]);
      t.ok(worst < 1e-3, `${sa} ∘ ${sb}: ${worst.toExponential(2)}`);
    }
  });
}

t.test('incompatible shapes give an error naming both shapes', async (t) => {
  t.throws(() => ops.add(upload(e, randomNd([2, 3], 1)), upload(e, randomNd([4], 1))), /\[2,3\] and \[4\] do not broadcast/);
});

t.test('a gradient used by two paths accumulates (x·x + x)', async (t) => {
  const x = randomNd([10], 3);
  const { worst } = await gradCheck(e, (a) => ops.add(ops.mul(a, a), a), (a: Nd) => map(a, (v) => v * v + v), [x]);
  t.ok(worst < 1e-3, `${worst}`);
});

t.test('broadcast and copy dimensions merge to the fewest that index the same elements', async (t) => {
  // A channel concat of [2, 3, 4, 5] into [2, 7, 4, 5] (x's strides, out's strides): each image's
  // 3·4·5 block is contiguous in both.
  t.same(mergeBroadcastDims([2, 3, 4, 5], [60, 20, 5, 1], [140, 20, 5, 1]), { shape: [2, 60], a: [60, 1], b: [140, 1] });
  // A transpose of the last two axes merges nothing but drops the unit axis.
  t.same(mergeBroadcastDims([1, 4, 3], [12, 1, 4], [12, 3, 1]), { shape: [4, 3], a: [1, 4], b: [3, 1] });
  // [N, C, H, W] · [1, C, 1, 1]: H and W merge, and the broadcast operand's strides are 0 there.
  t.same(mergeBroadcastDims([2, 3, 4, 5], [60, 20, 5, 1], [0, 1, 0, 0]), { shape: [2, 3, 20], a: [60, 20, 1], b: [0, 1, 0] });
  t.same(mergeBroadcastDims([1, 1], [1, 1], [1, 1]), { shape: [], a: [], b: [] });
});
