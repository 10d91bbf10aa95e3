import t from 'tap';
import { ops } from '../../src/index.ts';
import { gradCheck, maxRelError, randomNd, testEngine, upload } from '../helpers/check.ts';
import { map, type Nd, numel, sumAxes } from '../helpers/reference.ts';

const e = await testEngine();

const cases: [number[], number[] | undefined, boolean][] = [
  [[7], undefined, false],
  [[100003], undefined, false],
  [[3, 5, 7], [1], false],
  [[3, 5, 7], [0, 2], true],
  [[3, 5, 7], [1, 2], false],
  [[2, 300, 3], [1], true],
  [[1, 1, 9], [0, 1], false],
  [[4, 1000], [1], false],
  // Rows of a multiple of 4 values, too many for a workgroup each (the vec4 row kernel): a bias
  // gradient's sum over batch and pixels, and one run of columns.
  [[2, 24, 3, 8], [0, 2, 3], false],
  [[20, 8], [1], true],
];

for (const [shape, axes, keep] of cases) {
  const all = axes ?? shape.map((_, i) => i);
  t.test(`sum and mean over ${JSON.stringify(axes)} of ${shape}`, async (t) => {
    const x = randomNd(shape, 3);
    const ref = sumAxes(x, all, keep);
    const s = ops.sum(upload(e, x), axes, keep);
    t.same(s.shape, ref.shape);
    t.ok(maxRelError(await s.read(), ref.data) < 1e-5);
    const n = all.reduce((p, a) => p * shape[a], 1);
    const m = ops.mean(upload(e, x), axes, keep);
    t.ok(maxRelError(await m.read(), map(ref, (v) => v / n).data) < 1e-5);
  });
  if (numel(shape) <= 5000) {
    t.test(`sum and mean backward over ${JSON.stringify(axes)} of ${shape}`, async (t) => {
      const x = randomNd(shape, 4);
      const n = all.reduce((p, a) => p * shape[a], 1);
      const g1 = await gradCheck(e, (a) => ops.sum(a, axes, keep), (a: Nd) => sumAxes(a, all, keep), [x]);
      t.ok(g1.worst < 1e-3, `sum ${g1.worst}`);
      const g2 = await gradCheck(e, (a) => ops.mean(a, axes, keep), (a: Nd) => map(sumAxes(a, all, keep), (v) => v / n), [x]);
      t.ok(g2.worst < 1e-3, `mean ${g2.worst}`);
    });
  }
}

t.test('an out-of-range axis is a clear error', async (t) => {
  t.throws(() => ops.sum(upload(e, randomNd([2, 2], 1)), [2]), /axis out of range/);
});

t.test('a mean over an axis of size 0 is an error naming the axis and shape; the sum is zeros', async (t) => {
  const x = e.zeros([3, 0, 4]);
  t.throws(() => ops.mean(x, [1]), new RangeError('mean: axis 1 of zeros [3,0,4] has size 0: a mean over no values'));
  t.throws(() => ops.mean(x), new RangeError('mean: axis 1 of zeros [3,0,4] has size 0: a mean over no values'));
  t.same(Array.from(await ops.sum(x, [1]).read()), new Array(12).fill(0));
});

t.test('a workgroup per row sums alike through workgroup memory and through subgroups', async (t) => {
  const { createEngine } = await import('../../src/engine/engine.ts');
  const tree = await createEngine({ device: e.device, tuning: { rows: { subgroups: 0 } } });
  const subgroups = await createEngine({ device: e.device, tuning: { rows: { subgroups: 1 } } });
  for (const [shape, axes] of [[[100003], undefined], [[4, 1000], [1]], [[3, 64], [1]]] as const) {
    const x = randomNd([...shape], 9);
    const ref = sumAxes(x, axes ? [...axes] : shape.map((_, i) => i), false).data;
    for (const [label, m] of [['workgroup memory', tree], ['subgroups', subgroups]] as const) {
      const err = maxRelError(await ops.sum(upload(m, x), axes ? [...axes] : undefined).read(), ref);
      t.ok(err < 1e-5, `${shape} through ${label}: ${err.toExponential(2)}`);
    }
  }
});

// PyTorch 1.13's x.sum(dim=[]) reduces every axis, NumPy's none; sum(x, []) returned x unreduced.
t.test('sum and mean refuse an empty axis list as ambiguous', async (t) => {
  const x = e.tensor([1, 2, 3, 4, 5, 6], [2, 3]);
  t.throws(() => ops.sum(x, []), /sum: axes \[\] is ambiguous \(PyTorch reduces every axis, NumPy none\)/);
  t.throws(() => ops.mean(x, []), /mean: axes \[\] is ambiguous/);
  t.same(Array.from(await ops.sum(x).read()), [21], 'no axes given: all of them');
});
