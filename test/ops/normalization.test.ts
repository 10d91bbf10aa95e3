import t from 'tap';
import { ops } from '../../src/index.ts';
import { gradCheck, maxRelError, randomNd, testEngine, upload } from '../helpers/check.ts';
import { broadcast, groupNormRef, type Nd, nd } from '../helpers/reference.ts';

const e = await testEngine();

// Every row layout of the fused kernels (a thread per row, as on CPU adapters; a workgroup per
// row combining through workgroup memory, or through subgroups, as on GPUs), each variant;
// [2, 8, 3, 5] in 4 groups has fewer values per channel than a workgroup has threads,
// [1, 4, 17, 17] in 2 groups more; [2, 8, 4, 4] and [1, 4, 32, 36] have H·W a multiple of 4
// (the kernels' vec4 loads); [1, 4, 32, 36] has more loads per channel than a workgroup has threads.
const ROW_MODES = [
  ['a thread per row', { threadPerRowFrom: 1 }],
  ['a workgroup per row', { threadPerRowFrom: 0, subgroups: 0 }],
  ['a workgroup per row through subgroups', { threadPerRowFrom: 0 }],
] as const;
for (const [mode, rows] of ROW_MODES) {
  for (const [label, opts] of [['plain', {}], ['SiLU', { silu: true }], ['scale-shift', { ss: true }], ['scale-shift + SiLU', { silu: true, ss: true }]] as const) {
    for (const [shape, groups] of [[[2, 8, 3, 5], 4], [[1, 4, 17, 17], 2], [[2, 8, 4, 4], 4], [[1, 4, 32, 36], 2]] as const) {
      const skip = mode.includes('subgroups') && !e.subgroupReductions ? 'this adapter has no subgroups with subgroup_id' : false;
      t.test(`groupNorm (${label}, ${mode}, [${shape}] in ${groups} groups): fused forward matches float64, fused backward matches finite differences`, { skip }, async (t) => {
        const saved = e.tuning.rows;
        e.tuning.rows = { ...rows };
        t.teardown(() => void (e.tuning.rows = saved));
        const [N, C] = shape;
        const x = randomNd([...shape], 1, -2, 3);
        const g = randomNd([C], 2, 0.5, 1.5);
        const b = randomNd([C], 3);
        const ss = 'ss' in opts ? randomNd([N, 2 * C], 4, -0.5, 0.5) : undefined;
        const silu = 'silu' in opts;
        const ref = (xx: Nd, gg: Nd, bb: Nd, s?: Nd) => groupNormRef(xx, gg, bb, groups, 1e-5, s, silu);
        const fused = ops.groupNorm(upload(e, x), upload(e, g), upload(e, b), { groups, silu, scaleShift: ss && upload(e, ss) });
        t.ok(maxRelError(await fused.read(), ref(x, g, b, ss).data) < 1e-5, 'fused forward');
        const inputs = ss ? [x, g, b, ss] : [x, g, b];
        const { perInput } = await gradCheck(
          e,
          (xx, gg, bb, s) => ops.groupNorm(xx, gg, bb, { groups, silu, scaleShift: s }),
          ref as (...a: Nd[]) => Nd,
          inputs,
        );
        perInput.forEach((err, i) => t.ok(err < 1e-3, `input ${i}: ${err.toExponential(2)}`));
      });
    }
  }
}

t.test('groupNorm keeps precision when |mean| ≫ std (statistics of data shifted by its first value)', async (t) => {
  const x = randomNd([1, 32, 4, 4], 9);
  const shifted = { data: x.data.map((v) => Math.fround(1000 + 0.01 * v)), shape: x.shape };
  const ones = { data: new Float64Array(32).fill(1), shape: [32] };
  const zeros = { data: new Float64Array(32), shape: [32] };
  const y = ops.groupNorm(upload(e, shifted), upload(e, ones), upload(e, zeros));
  const err = maxRelError(await y.read(), groupNormRef(shifted, ones, zeros, 32, 1e-5).data);
  t.ok(err < 1e-3, `${err}`);
});

// Values 2e19 apart: their variance (1e38) fits an f32, the square of their difference (4e38) does
// not. The statistics squared it first and gave inf (output β) or inf·0 = NaN. Worked by hand:
// [0, 2e19] → ±1; [0, 2e19, 0, 0] has mean 5e18 and variance 7.5e37 → −1/√3 and √3.
for (const [mode, rows] of ROW_MODES) t.test(`layerNorm and groupNorm of values 2e19 apart (${mode}) are those of float64`, async (t) => {
  const saved = e.tuning.rows;
  e.tuning.rows = { ...rows };
  t.teardown(() => void (e.tuning.rows = saved));
  const cases: [number[], number[]][] = [[[0, 2e19], [-1, 1]], [[0, 2e19, 0, 0], [-1 / Math.sqrt(3), Math.sqrt(3), -1 / Math.sqrt(3), -1 / Math.sqrt(3)]]];
  for (const [values, expected] of cases) {
    const n = values.length;
    const ones = e.tensor(new Float32Array(n).fill(1), [n]);
    const zeros = e.tensor(new Float32Array(n), [n]);
    const rowsOf = (k: number) => e.tensor(Float32Array.from({ length: k * n }, (_, i) => values[i % n]), [k, n]);
    // 2 rows, and 24 (a thread per row from 16 rows on CPU adapters by default).
    for (const k of [2, 24]) {
      const y = await ops.layerNorm(rowsOf(k), ones, zeros).read();
      t.ok(maxRelError(y, Float64Array.from({ length: k * n }, (_, i) => expected[i % n])) < 1e-5, `layerNorm [${values}] × ${k}: ${Array.from(y.slice(0, n))}`);
    }
    const g = ops.groupNorm(e.tensor(Float32Array.from(values), [1, n, 1, 1]), e.tensor(new Float32Array(n).fill(2), [n]), e.tensor(new Float32Array(n).fill(0.5), [n]), { groups: 1 });
    const got = await g.read();
    t.ok(maxRelError(got, Float64Array.from(expected, (v) => 2 * v + 0.5)) < 1e-5, `groupNorm [${values}]: ${Array.from(got)}`);
  }
});

// Rows of 16 values (read as vec4s) and of 15, in every row layout.
for (const affine of [[4, 2, 2], [5, 3]]) for (const [mode, rows] of ROW_MODES) t.test(`layerNorm over [${affine}] with an elementwise affine (${mode}): forward and finite differences`, async (t) => {
  const saved = e.tuning.rows;
  e.tuning.rows = { ...rows };
  t.teardown(() => void (e.tuning.rows = saved));
  const D = affine.reduce((p, d) => p * d, 1);
  const x = randomNd([3, ...affine], 1, -1, 2);
  const w = randomNd(affine, 2);
  const b = randomNd(affine, 3);
  const ref = (xx: Nd, ww: Nd, bb: Nd) => {
    const out = new Float64Array(xx.data.length);
    for (let r = 0; r < 3; r++) {
      const row = xx.data.subarray(r * D, r * D + D);
      const m = row.reduce((a, v) => a + v, 0) / D;
      const v = row.reduce((a, q) => a + (q - m) ** 2, 0) / D;
      for (let i = 0; i < D; i++) out[r * D + i] = ((row[i] - m) / Math.sqrt(v + 1e-5)) * ww.data[i] + bb.data[i];
    }
    return { data: out, shape: xx.shape };
  };
  t.ok(maxRelError(await ops.layerNorm(upload(e, x), upload(e, w), upload(e, b)).read(), ref(x, w, b).data) < 1e-5);
  const { perInput } = await gradCheck(e, (xx, ww, bb) => ops.layerNorm(xx, ww, bb), ref, [x, w, b]);
  perInput.forEach((err, i) => t.ok(err < 1e-3, `input ${i}: ${err.toExponential(2)}`));
});

t.test('batchNorm2d: train mode normalises by batch statistics, updates running stats with the unbiased variance; eval uses them', async (t) => {
  const x = randomNd([3, 2, 2, 2], 4, -1, 2);
  const n = 12;
  const mean = [0, 1].map((c) => nd([3, 2, 2], ([a, i, j]) => x.data[((a * 2 + c) * 2 + i) * 2 + j]).data.reduce((s, v) => s + v, 0) / n);
  const varB = [0, 1].map((c) => nd([3, 2, 2], ([a, i, j]) => x.data[((a * 2 + c) * 2 + i) * 2 + j]).data.reduce((s, v) => s + (v - mean[c]) ** 2, 0) / n);
  const state = { runningMean: e.tensor([0.5, -0.5], [2]), runningVar: e.tensor([2, 1], [2]), batches: 0 };
  const w = upload(e, { data: Float64Array.from([1.5, 0.5]), shape: [2] });
  const b = upload(e, { data: Float64Array.from([0.1, -0.2]), shape: [2] });
  const y = ops.batchNorm2d(upload(e, x), w, b, state, { training: true });
  const ref = nd([3, 2, 2, 2], ([a, c, i, j]) => ((x.data[((a * 2 + c) * 2 + i) * 2 + j] - mean[c]) / Math.sqrt(varB[c] + 1e-5)) * [1.5, 0.5][c] + [0.1, -0.2][c]);
  t.ok(maxRelError(await y.read(), ref.data) < 1e-5, 'train forward');
  const rm = await state.runningMean.read();
  const rv = await state.runningVar.read();
  t.ok(maxRelError(rm, [0.9 * 0.5 + 0.1 * mean[0], 0.9 * -0.5 + 0.1 * mean[1]]) < 1e-6, 'running mean');
  t.ok(maxRelError(rv, [0.9 * 2 + 0.1 * varB[0] * n / (n - 1), 0.9 * 1 + 0.1 * varB[1] * n / (n - 1)]) < 1e-6, 'running var (unbiased)');
  // One value per channel (one image, 1×1 maps): no batch variance, refused as torch refuses it.
  t.throws(() => ops.batchNorm2d(e.tensor([1, 2], [1, 2, 1, 1]), w, b, state, { training: true }), /batchNorm2d: training needs more than one value per channel, got input \[1,2,1,1\]/);
  t.same(Array.from(await state.runningVar.read()), Array.from(rv), 'running stats untouched');
  const ev = ops.batchNorm2d(upload(e, x), w, b, state, { training: false });
  const evRef = nd([3, 2, 2, 2], ([a, c, i, j]) => ((x.data[((a * 2 + c) * 2 + i) * 2 + j] - rm[c]) / Math.sqrt(rv[c] + 1e-5)) * [1.5, 0.5][c] + [0.1, -0.2][c]);
  t.ok(maxRelError(await ev.read(), evRef.data) < 1e-5, 'eval forward');
  const fresh = () => ({ runningMean: e.zeros([2]), runningVar: e.zeros([2]), batches: 0 });
  const bnRef = (xx: Nd, ww: Nd, bb: Nd) => {
    const m = [0, 1].map((c) => nd([3, 2, 2], ([a, i, j]) => xx.data[((a * 2 + c) * 2 + i) * 2 + j]).data.reduce((s, v) => s + v, 0) / n);
    const v = [0, 1].map((c) => nd([3, 2, 2], ([a, i, j]) => xx.data[((a * 2 + c) * 2 + i) * 2 + j]).data.reduce((s, q) => s + (q - m[c]) ** 2, 0) / n);
    return nd([3, 2, 2, 2], ([a, c, i, j]) => ((xx.data[((a * 2 + c) * 2 + i) * 2 + j] - m[c]) / Math.sqrt(v[c] + 1e-5)) * ww.data[c] + bb.data[c]);
  };
  const { perInput } = await gradCheck(e, (xx, ww, bb) => ops.batchNorm2d(xx, ww, bb, fresh(), { training: true }), bnRef,
    [x, { data: Float64Array.from([1.5, 0.5]), shape: [2] }, { data: Float64Array.from([0.1, -0.2]), shape: [2] }]);
  perInput.forEach((err, i) => t.ok(err < 1e-3, `train backward input ${i}: ${err.toExponential(2)}`));
});

t.test('crossEntropy matches −mean log softmax[label], and its gradient finite differences', async (t) => {
  const logits = randomNd([4, 5], 7, -3, 3);
  const labels = [0, 4, 2, 2];
  const ref = (l: Nd) => {
    let s = 0;
    for (let i = 0; i < 4; i++) {
      const row = Array.from(l.data.subarray(i * 5, i * 5 + 5));
      const m = Math.max(...row);
      const lse = m + Math.log(row.reduce((a, v) => a + Math.exp(v - m), 0));
      s += lse - row[labels[i]];
    }
    return { data: Float64Array.from([s / 4]), shape: [] as number[] };
  };
  t.ok(maxRelError(await ops.crossEntropy(upload(e, logits), labels).read(), ref(logits).data) < 1e-6);
  const { worst } = await gradCheck(e, (l) => ops.crossEntropy(l, labels), ref, [logits]);
  t.ok(worst < 1e-3, `${worst}`);
  t.throws(() => ops.crossEntropy(upload(e, logits), [0, 1, 2, 5]), /label 5 of sample 3 is outside 0..4/);
});

t.test('crossEntropy is finite where another class\'s logit is −inf, as PyTorch\'s', async (t) => {
  // Row 0: logits [−inf, 0, ln 3] with label 1 → −log(1/4) = ln 4, gradient (softmax − onehot)/N =
  // [0, 1/4 − 1, 3/4]/2. Row 1: [1, 1, −inf], label 0 → ln 2, gradient [1/2 − 1, 1/2, 0]/2.
  const logits = e.tensor([-Infinity, 0, Math.log(3), 1, 1, -Infinity], [2, 3], 'logits');
  logits.requiresGrad = true;
  const loss = ops.crossEntropy(logits, [1, 0]);
  const [value] = await loss.read();
  t.ok(Math.abs(value - (Math.log(4) + Math.log(2)) / 2) < 1e-6, `loss ${value}`);
  e.tape.backward(loss);
  const grad = Array.from(await logits.grad!.read());
  const expected = [0, -3 / 8, 3 / 8, -1 / 4, 1 / 4, 0];
  t.ok(grad.every((g, i) => Math.abs(g - expected[i]) < 1e-6), `gradient ${grad}`);
});

t.test('dropout is the identity in eval and keeps the mean in training', async (t) => {
  const x = upload(e, { data: new Float64Array(10000).fill(1), shape: [10000] });
  t.equal(ops.dropout(x, 0.3, false, 1), x);
  const y = await ops.dropout(x, 0.3, true, 1).read();
  const kept = y.filter((v) => v !== 0).length;
  t.ok(Math.abs(kept / 10000 - 0.7) < 0.03, `kept ${kept}`);
  t.ok(y.every((v) => v === 0 || Math.abs(v - 1 / 0.7) < 1e-6));
  t.same(Array.from(await ops.dropout(x, 0.3, true, 1).read()), Array.from(y), 'same seed, same mask');
});

t.test('dropout with a seed per row: each row\'s mask is that of its seed alone, whatever rows it shares a tensor with', async (t) => {
  const rows = upload(e, { data: new Float64Array(3 * 500).fill(1), shape: [3, 500] });
  const one = upload(e, { data: new Float64Array(500).fill(1), shape: [1, 500] });
  const y = await ops.dropout(rows, 0.5, true, [7, 8, 7]).read();
  const alone = async (seed: number) => Array.from(await ops.dropout(one, 0.5, true, [seed]).read());
  t.same(Array.from(y.subarray(0, 500)), await alone(7));
  t.same(Array.from(y.subarray(500, 1000)), await alone(8));
  t.same(Array.from(y.subarray(1000)), await alone(7));
  t.not(y.subarray(0, 500).join(), y.subarray(500, 1000).join(), 'other seeds, other masks');
  t.throws(() => ops.dropout(rows, 0.5, true, [1, 2]), /dropout: 2 seeds for 3 rows/);
});

t.test('broadcast helper sanity: (x − mean) over rows equals the reference', async (t) => {
  const a = randomNd([2, 3], 1);
  const r = broadcast(a, { data: Float64Array.from([1, 2, 3]), shape: [3] }, (p, q) => p - q);
  t.ok(maxRelError(await ops.sub(upload(e, a), e.tensor([1, 2, 3], [3])).read(), r.data) < 1e-6);
});

t.test('groupNorm and normalizeRows agree with float64 in every row layout', async (t) => {
  const { createEngine } = await import('../../src/engine/engine.ts');
  const x = randomNd([3, 64, 5, 7], 21, -2, 3);
  const g = randomNd([64], 22, 0.5, 1.5);
  const b = randomNd([64], 23);
  const ss = randomNd([3, 128], 24, -0.5, 0.5);
  const ref = groupNormRef(x, g, b, 32, 1e-5, ss, true).data;
  const grads: Float32Array[] = [];
  for (const [mode, layout] of ROW_MODES) {
    const m = await createEngine({ device: e.device, tuning: { rows: { ...layout } } });
    const y = ops.groupNorm(upload(m, x), upload(m, g), upload(m, b), { silu: true, scaleShift: upload(m, ss) });
    t.ok(maxRelError(await y.read(), ref) < 1e-5, `groupNorm, ${mode}`);
    const xt = upload(m, x);
    xt.requiresGrad = true;
    const rows = ops.normalizeRows(xt, 35);
    const mean = Array.from({ length: 3 * 64 }, (_, r) => x.data.slice(r * 35, (r + 1) * 35).reduce((s, v) => s + v, 0) / 35);
    const got = await rows.read();
    const rowMean = Array.from({ length: 3 * 64 }, (_, r) => got.slice(r * 35, (r + 1) * 35).reduce((s, v) => s + v, 0) / 35);
    t.ok(rowMean.every((v) => Math.abs(v) < 1e-5) && mean.length === 192, `normalizeRows rows have mean 0, ${mode}`);
    m.tape.backward(ops.sum(ops.mul(rows, upload(m, randomNd([3, 64, 5, 7], 25)))));
    grads.push(await xt.grad!.read());
  }
  t.ok(maxRelError(grads[0], Float64Array.from(grads[1])) < 1e-5, 'normalizeRows backward: thread per row = workgroup per row');
  t.ok(maxRelError(grads[2], Float64Array.from(grads[1])) < 1e-5, 'normalizeRows backward: through subgroups = workgroup per row');
});

// Tensors with no values where the op needs some: groupNorm of H·W = 0 bound a 4-byte buffer, a
// raw WebGPU error that failed the engine; layerNorm of D = 0 said "invalid shape [NaN,2]";
// crossEntropy of no samples "uniform alpha = -Infinity"; adaptiveAvgPool2d gave NaN and
// resizeBilinear zeros for H = 0 (PyTorch refuses both). Each is refused, naming the tensor.
t.test('ops that need values refuse empty inputs with a clear error, and the engine goes on', async (t) => {
  const empty = (shape: number[]) => e.empty(shape, 'x');
  t.throws(() => ops.groupNorm(empty([2, 4, 0, 2]), e.tensor([1, 1, 1, 1], [4]), e.tensor([0, 0, 0, 0], [4]), { groups: 2 }), /groupNorm: x \[2,4,0,2\] has no pixels to normalise/);
  t.throws(() => ops.groupNorm(empty([2, 0, 3, 3]), empty([0]), empty([0]), { groups: 2 }), /groupNorm: x \[2,0,3,3\] has no channels to normalise/);
  t.throws(() => ops.layerNorm(empty([2, 0]), empty([0]), empty([0])), /layerNorm: the normalised shape \[0\] of x has no values/);
  t.throws(() => ops.crossEntropy(empty([0, 3]), []), /crossEntropy: logits \[0,3\]: a mean over 0 samples of 3 classes is undefined/);
  t.throws(() => ops.adaptiveAvgPool2d(empty([1, 2, 0, 4]), 1), /adaptiveAvgPool2d: x \[1,2,0,4\] has no pixels to pool/);
  t.throws(() => ops.resizeBilinear(empty([1, 2, 0, 4]), 2, 2), /resizeBilinear: x \[1,2,0,4\] to 2x2: input and output need at least one pixel/);
  t.same(Array.from(await ops.relu(e.tensor([-1, 2], [2])).read()), [0, 2], 'the engine still works');
});

// An empty batch, as a batch split's edge may give: PyTorch returns an empty output and zero
// gradients for γ and β (the backward reshaped the per-image sums [0, 2C] to [2, C] and failed).
t.test('groupNorm of an empty batch: an empty output, and zero gradients for γ and β', async (t) => {
  const x = e.empty([0, 4, 3, 3], 'x');
  const [g, b] = [e.tensor([1, 2, 3, 4], [4]), e.tensor([0, 0, 0, 0], [4])];
  for (const v of [x, g, b]) v.requiresGrad = true;
  const y = ops.groupNorm(x, g, b, { groups: 2, silu: true });
  t.same(y.shape, [0, 4, 3, 3]);
  e.tape.backward(ops.sum(y));
  t.same(x.grad!.shape, [0, 4, 3, 3]);
  t.same(Array.from(await g.grad!.read()), [0, 0, 0, 0]);
  t.same(Array.from(await b.grad!.read()), [0, 0, 0, 0]);
});

// Sizes alone were checked: a [N, C, 2] scale-shift (interleaved) read as [N, 2C], and running
// statistics of 1 value for 2 channels were written past their end by the in-place update.
t.test('groupNorm takes scale-shift only as [N, 2C] (or [N, 2C, 1, 1]); batchNorm2d running statistics of C values', async (t) => {
  const x = e.tensor(Float32Array.from({ length: 2 * 4 * 4 }, (_, i) => Math.sin(i)), [1, 2, 4, 4], 'x');
  const [g, b] = [e.tensor([1, 1], [2]), e.tensor([0, 0], [2])];
  t.throws(() => ops.groupNorm(x, g, b, { groups: 2, scaleShift: e.zeros([1, 2, 2]) }), /groupNorm: scale-shift \[1,2,2\] is not \[1, 4\]/);
  t.doesNotThrow(() => ops.groupNorm(x, g, b, { groups: 2, scaleShift: e.zeros([1, 4, 1, 1]) }).dispose());
  const small = { runningMean: e.zeros([1], 'rm'), runningVar: e.zeros([2], 'rv'), batches: 0 };
  t.throws(() => ops.batchNorm2d(x, g, b, small, { training: true }), /batchNorm2d: runningMean rm \[1\] does not match the 2 channels of x \[1,2,4,4\]/);
});
