import t from 'tap';
import { ops } from '../../src/index.ts';
import { gradCheck, maxRelError, randomNd, testEngine, upload } from '../helpers/check.ts';
import { adaptiveAvgPoolRef, bilinearRef, type Nd, nd } from '../helpers/reference.ts';

const e = await testEngine();

for (const [H, W, oh, ow] of [[5, 7, 2, 3], [4, 4, 4, 4], [7, 7, 3, 3], [16, 16, 2, 2], [3, 2, 5, 4]]) {
  t.test(`adaptiveAvgPool2d ${H}x${W} → ${oh}x${ow}: forward and finite differences`, async (t) => {
    const x = randomNd([2, 3, H, W], H * 10 + W);
    t.ok(maxRelError(await ops.adaptiveAvgPool2d(upload(e, x), oh, ow).read(), adaptiveAvgPoolRef(x, oh, ow).data) < 1e-6);
    const { worst } = await gradCheck(e, (a) => ops.adaptiveAvgPool2d(a, oh, ow), (a: Nd) => adaptiveAvgPoolRef(a, oh, ow), [x]);
    t.ok(worst < 1e-3, `${worst}`);
  });
}

t.test('avgPool2 and upsample2: forward by hand, backward by finite differences', async (t) => {
  const x = randomNd([2, 3, 4, 6], 1);
  const poolRef = (a: Nd) => nd([2, 3, 2, 3], ([n, c, i, j]) => {
    const v = (y: number, z: number) => a.data[((n * 3 + c) * 4 + y) * 6 + z];
    return (v(2 * i, 2 * j) + v(2 * i + 1, 2 * j) + v(2 * i, 2 * j + 1) + v(2 * i + 1, 2 * j + 1)) / 4;
  });
  const upRef = (a: Nd) => nd([2, 3, 8, 12], ([n, c, i, j]) => a.data[((n * 3 + c) * 4 + (i >> 1)) * 6 + (j >> 1)]);
  t.ok(maxRelError(await ops.avgPool2(upload(e, x)).read(), poolRef(x).data) < 1e-6);
  t.ok(maxRelError(await ops.upsample2(upload(e, x)).read(), upRef(x).data) === 0);
  t.ok((await gradCheck(e, ops.avgPool2, poolRef, [x])).worst < 1e-3);
  t.ok((await gradCheck(e, ops.upsample2, upRef, [x])).worst < 1e-3);
});

t.test('resizeBilinear (align_corners=False) matches PyTorch\'s formula, down and up, and its gradient', async (t) => {
  for (const [H, W, oh, ow] of [[8, 8, 4, 4], [5, 7, 3, 9], [4, 4, 4, 4]]) {
    const x = randomNd([1, 2, H, W], H + W);
    t.ok(maxRelError(await ops.resizeBilinear(upload(e, x), oh, ow).read(), bilinearRef(x, oh, ow).data) < 1e-5, `${H}x${W}→${oh}x${ow}`);
    if (H !== oh) t.ok((await gradCheck(e, (a) => ops.resizeBilinear(a, oh, ow), (a: Nd) => bilinearRef(a, oh, ow), [x])).worst < 1e-3);
  }
});
