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

// Widths 6 and 3 take the kernels' division path, 32 and 16 their shift-and-mask one; 2·9·10·32
// values are more than one workgroup's block and end in a partial one.
for (const [N, C, H, W] of [[2, 3, 4, 6], [2, 9, 10, 32]]) {
  t.test(`avgPool2 and upsample2 of [${N}, ${C}, ${H}, ${W}]: forward by hand, backward by finite differences`, async (t) => {
    const x = randomNd([N, C, H, W], W);
    const at = (a: Nd, n: number, c: number, y: number, z: number, h: number, w: number) => a.data[((n * C + c) * h + y) * w + z];
    const poolRef = (a: Nd) => nd([N, C, H / 2, W / 2], ([n, c, i, j]) => {
      const v = (y: number, z: number) => at(a, n, c, y, z, H, W);
      return (v(2 * i, 2 * j) + v(2 * i + 1, 2 * j) + v(2 * i, 2 * j + 1) + v(2 * i + 1, 2 * j + 1)) / 4;
    });
    const upRef = (a: Nd) => nd([N, C, 2 * H, 2 * W], ([n, c, i, j]) => at(a, n, c, i >> 1, j >> 1, H, W));
    t.ok(maxRelError(await ops.avgPool2(upload(e, x)).read(), poolRef(x).data) < 1e-6);
    t.ok(maxRelError(await ops.upsample2(upload(e, x)).read(), upRef(x).data) === 0);
    const small = randomNd([1, 2, 4, W], W + 1); // finite differences cost two runs per value
    t.ok((await gradCheck(e, ops.avgPool2, (a: Nd) => nd([1, 2, 2, W / 2], ([, c, i, j]) => {
      const v = (y: number, z: number) => at(a, 0, c, y, z, 4, W);
      return (v(2 * i, 2 * j) + v(2 * i + 1, 2 * j) + v(2 * i, 2 * j + 1) + v(2 * i + 1, 2 * j + 1)) / 4;
    }), [small])).worst < 1e-3);
    t.ok((await gradCheck(e, ops.upsample2, (a: Nd) => nd([1, 2, 8, 2 * W], ([, c, i, j]) => at(a, 0, c, i >> 1, j >> 1, 4, W)), [small])).worst < 1e-3);
  });
}

t.test('resizeBilinear (align_corners=False) matches PyTorch\'s formula, down and up, and its gradient', async (t) => {
  for (const [H, W, oh, ow] of [[8, 8, 4, 4], [5, 7, 3, 9], [4, 4, 4, 4]]) {
    const x = randomNd([1, 2, H, W], H + W);
    t.ok(maxRelError(await ops.resizeBilinear(upload(e, x), oh, ow).read(), bilinearRef(x, oh, ow).data) < 1e-5, `${H}x${W}→${oh}x${ow}`);
    if (H !== oh) t.ok((await gradCheck(e, (a) => ops.resizeBilinear(a, oh, ow), (a: Nd) => bilinearRef(a, oh, ow), [x])).worst < 1e-3);
  }
});
