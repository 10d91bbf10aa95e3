import t from 'tap';
import { ops } from '../../src/index.ts';
import { gradCheck, maxRelError, randomNd, testEngine, upload } from '../helpers/check.ts';
import { conv2dRef, type Nd } from '../helpers/reference.ts';

const e = await testEngine();

const cases: [string, number[], number[]][] = [
  ['3x3 on 2x3x5x7 → 4', [2, 3, 5, 7], [4, 3, 3, 3]],
  ['3x3 on 1x1x1x1 (all padding)', [1, 1, 1, 1], [2, 1, 3, 3]],
  ['1x1 on 2x5x4x3 → 3', [2, 5, 4, 3], [3, 5, 1, 1]],
  ['3x3 on 1x70x9x11 → 67 (several tiles)', [1, 70, 9, 11], [67, 70, 3, 3]],
];

for (const [name, xs, ws] of cases) {
  t.test(`conv2d forward ${name} with bias and residual matches float64`, async (t) => {
    const x = randomNd(xs, 1);
    const w = randomNd(ws, 2);
    const b = randomNd([ws[0]], 3);
    const r = randomNd([xs[0], ws[0], xs[2], xs[3]], 4);
    const pad = (ws[2] - 1) / 2;
    const y = ops.conv2d(upload(e, x), upload(e, w), { bias: upload(e, b), residual: upload(e, r) });
    t.ok(maxRelError(await y.read(), conv2dRef(x, w, pad, b, r).data) < 1e-5);
    const plain = ops.conv2d(upload(e, x), upload(e, w));
    t.ok(maxRelError(await plain.read(), conv2dRef(x, w, pad).data) < 1e-5);
  });
}

for (const [name, xs, ws] of cases.slice(0, 3)) {
  t.test(`conv2d backward ${name}: input, weight, bias and residual gradients match finite differences`, async (t) => {
    const pad = (ws[2] - 1) / 2;
    const { perInput } = await gradCheck(
      e,
      (x, w, b, r) => ops.conv2d(x, w, { bias: b, residual: r }),
      (x: Nd, w: Nd, b: Nd, r: Nd) => conv2dRef(x, w, pad, b, r),
      [randomNd(xs, 5), randomNd(ws, 6), randomNd([ws[0]], 7), randomNd([xs[0], ws[0], xs[2], xs[3]], 8)],
      { maxCoords: 40 },
    );
    perInput.forEach((err, i) => t.ok(err < 1e-3, `input ${i}: ${err.toExponential(2)}`));
  });
}

t.test('conv2d shape errors name the tensors', async (t) => {
  t.throws(() => ops.conv2d(upload(e, randomNd([1, 3, 4, 4], 1)), upload(e, randomNd([2, 4, 3, 3], 1))), /expects 4 input channels, input .* has 3/);
});
