import t from 'tap';
import { ops } from '../../src/index.ts';
import { gradCheck, maxRelError, randomNd, testEngine, upload } from '../helpers/check.ts';
import { type Nd, qkvAttentionRef } from '../helpers/reference.ts';

const e = await testEngine();

for (const legacy of [true, false]) {
  const order = legacy ? 'legacy (per-head q|k|v)' : 'new (q, k, v chunks)';
  t.test(`fused qkvAttention, ${order}, matches float64 on 1, 7, 64 and 300 tokens`, async (t) => {
    for (const [heads, d, T] of [[1, 4, 1], [2, 8, 7], [4, 32, 64], [2, 64, 300]]) {
      const qkv = randomNd([2, 3 * heads * d, T], heads * 100 + T, -2, 2);
      const y = ops.qkvAttention(upload(e, qkv), heads, legacy);
      const err = maxRelError(await y.read(), qkvAttentionRef(qkv, heads, legacy).data);
      t.ok(err < 1e-5, `heads ${heads}, d ${d}, T ${T}: ${err.toExponential(2)}`);
    }
  });
  t.test(`qkvAttention backward, ${order}, matches finite differences`, async (t) => {
    const qkv = randomNd([2, 3 * 2 * 4, 6], 5, -1.5, 1.5);
    const { worst } = await gradCheck(e, (a) => ops.qkvAttention(a, 2, legacy), (a: Nd) => qkvAttentionRef(a, 2, legacy), [qkv], { maxCoords: 60 });
    t.ok(worst < 1e-3, `${worst.toExponential(2)}`);
  });
}
