import t from 'tap';
import { ops } from '../../src/index.ts';
import { gradCheck, maxRelError, randomNd, testEngine, upload } from '../helpers/check.ts';
import { type Nd, softmaxRef } from '../helpers/reference.ts';

const base = await testEngine();
const { createEngine } = await import('../../src/engine/engine.ts');
// The row layouts (kernels/normalize.wgsl.ts): as the adapter chooses (on CPU adapters a thread per
// row from 16 rows), a workgroup per row through workgroup memory, and through subgroups.
const layouts = [
  ['', base],
  [', a workgroup per row', await createEngine({ device: base.device, tuning: { rows: { threadPerRowFrom: 0, subgroups: 0 } } })],
  ...(base.subgroupReductions ? [[', a workgroup per row through subgroups', await createEngine({ device: base.device, tuning: { rows: { threadPerRowFrom: 0 } } })] as const] : []),
] as const;

for (const [layout, e] of layouts) for (const log of [false, true]) {
  const name = `${log ? 'logSoftmax' : 'softmax'}${layout}`;
  const op = log ? ops.logSoftmax : ops.softmax;
  // On CPU adapters 16 rows or more take a thread per row, fewer a workgroup per row.
  t.test(`${name} forward on rows of 1 to 4100 values, few and many rows`, async (t) => {
    // Rows of a multiple of 4 values are read as vec4s: [5, 12], [2, 4100], [20, 36].
    for (const shape of [[3, 1], [4, 10], [2, 3, 67], [2, 4099], [20, 33], [64, 7], [5, 12], [2, 4100], [20, 36]]) {
      const x = randomNd(shape, 5, -8, 8);
      const err = maxRelError(await op(upload(e, x)).read(), softmaxRef(x, log).data);
      t.ok(err < 1e-5, `${shape}: ${err.toExponential(2)}`);
    }
  });
  t.test(`${name} is stable for large logits, with a positive or negative scale, in 2 rows and in 24`, async (t) => {
    // The second row's maximum sits in the last lane of a vec4: exp overflows unless it is
    // subtracted. With scale −1 the largest logit is the most negative x (a maximum taken over x
    // and then scaled would be the smallest logit: e^2000 overflows). 24 rows: a thread per row on
    // CPU adapters.
    const rows = [1000, 1001, 1002, -1000, 0, 1, 2, 200];
    for (const count of [2, 24]) for (const scale of [1, -1]) {
      const data = Float64Array.from({ length: 4 * count }, (_, i) => rows[i % 8]);
      const x: Nd = { data, shape: [count, 4] };
      const y = await op(upload(e, x), { scale }).read();
      t.ok(y.every(Number.isFinite), `${count} rows, scale ${scale}: finite`);
      t.ok(maxRelError(y, softmaxRef({ data: data.map((v) => v * scale), shape: x.shape }, log).data) < 1e-5, `${count} rows, scale ${scale}`);
    }
  });
  // PyTorch's masks fill with the lowest float (masked_fill(finfo(float32).min)): a row of it alone
  // is uniform, and beside other values it weighs nothing. Starting the running maximum above it
  // gave NaN (0 · ∞ in the rescale).
  t.test(`${name}: rows holding the lowest float (a mask), in 2 rows and in 24, of 4, 5 and 67 values`, async (t) => {
    const lowest = -3.4028234663852886e38;
    for (const count of [2, 24]) for (const n of [4, 5, 67]) {
      const data = Float64Array.from({ length: count * n }, (_, i) => (Math.floor(i / n) % 2 === 0 || i % 3 === 0 ? lowest : (i % 7) - 3));
      const x: Nd = { data, shape: [count, n] };
      const y = await op(upload(e, x)).read();
      t.ok(y.every(Number.isFinite), `${count} × ${n}: finite`);
      t.ok(maxRelError(y, softmaxRef(x, log).data) < 1e-5, `${count} × ${n}: as float64`);
    }
  });
  t.test(`${name}: a row's maximum found late (the running sums rescaled as it grows)`, async (t) => {
    // Rising and falling ramps over 20 units: without rescaling, the early terms of a thread's sum
    // would keep weights up to e^980 too large, and the threads' sums would combine unscaled.
    for (const cols of [7, 64, 260, 1027]) {
      const rising = Array.from({ length: cols }, (_, k) => (1000 * k) / cols - 500);
      const x: Nd = { data: Float64Array.from([...rising, ...rising.slice().reverse(), ...rising.map((v, k) => (k % 3 ? v : -v))]), shape: [3, cols] };
      const y = await op(upload(e, x)).read();
      t.ok(y.every(Number.isFinite), `${cols} columns: finite`);
      t.ok(maxRelError(y, softmaxRef(x, log).data) < 1e-5, `${cols} columns`);
    }
  });
  t.test(`${name} backward matches finite differences`, async (t) => {
    for (const shape of [[3, 7], [2, 130], [17, 9], [3, 8], [2, 132], [17, 12]]) {
      const { worst } = await gradCheck(e, (x) => op(x), (a: Nd) => softmaxRef(a, log), [randomNd(shape, 6, -3, 3)]);
      t.ok(worst < 1e-3, `${shape}: ${worst.toExponential(2)}`);
    }
  });
  // The scale option: logits scale·x (attention's 1/√d), forward and backward.
  const scaled = (a: Nd, s: number): Nd => ({ data: a.data.map((v) => v * s), shape: a.shape });
  t.test(`${name} with a scale is that of the scaled logits, forward and backward`, async (t) => {
    for (const [shape, s] of [[[3, 7], 0.125], [[2, 132], 2.5], [[20, 36], 0.3]] as const) {
      const x = randomNd([...shape], 9, -4, 4);
      const err = maxRelError(await op(upload(e, x), { scale: s }).read(), softmaxRef(scaled(x, s), log).data);
      t.ok(err < 1e-5, `${shape}, scale ${s}: forward ${err.toExponential(2)}`);
      const { worst } = await gradCheck(e, (a) => op(a, { scale: s }), (a: Nd) => softmaxRef(scaled(a, s), log), [randomNd([...shape], 10, -2, 2)]);
      t.ok(worst < 1e-3, `${shape}, scale ${s}: backward ${worst.toExponential(2)}`);
    }
  });
}
