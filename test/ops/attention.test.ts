import t from 'tap';
import { createEngine, ops } from '../../src/index.ts';
import { gradCheck, maxRelError, randomNd, testEngine, upload } from '../helpers/check.ts';
import { type Nd, qkvAttentionRef } from '../helpers/reference.ts';

const e = await testEngine();
// Training through the fused kernels (the weights recomputed from each query's log-sum-exp) and
// through matmul + softmax (the weights materialised), whichever this adapter picks by default.
const paths = [
  ['fused, flash-style', await createEngine({ device: e.device, tuning: { attention: { fusedBackward: 1 } } })],
  ['composite', await createEngine({ device: e.device, tuning: { attention: { fusedBackward: 0 } } })],
] as const;

// Inference: the fused kernel, or, where the subgroup GEMM runs (lavapipe), matmul + softmax for
// token counts divisible by 4; the engine without the subgroup GEMM runs every case fused.
const forwardPaths = [
  ['as the adapter chooses', e],
  ['fused', await createEngine({ device: e.device, tuning: { matmulSubgroup: { enabled: 0 } } })],
] as const;

for (const legacy of [true, false]) {
  const order = legacy ? 'legacy (per-head q|k|v)' : 'new (q, k, v chunks)';
  for (const [path, engine] of forwardPaths) {
    t.test(`qkvAttention (${path}), ${order}, matches float64 on 1, 7, 64 and 300 tokens`, async (t) => {
      for (const [heads, d, T] of [[1, 4, 1], [2, 8, 7], [4, 32, 64], [2, 64, 300]]) {
        const composite = ops.attentionMaterialisesWeights(engine, d, false, { T, matrices: 2 * heads });
        t.equal(composite, engine.subgroupMatmul && T % 4 === 0, `T ${T}: ${composite ? 'matmul + softmax' : 'fused'}`);
        const qkv = randomNd([2, 3 * heads * d, T], heads * 100 + T, -2, 2);
        const y = ops.qkvAttention(upload(engine, qkv), heads, legacy);
        const err = maxRelError(await y.read(), qkvAttentionRef(qkv, heads, legacy).data);
        t.ok(err < 1e-5, `heads ${heads}, d ${d}, T ${T}: ${err.toExponential(2)}`);
      }
    });
  }
  t.test(`qkvAttention, ${order}: weights that would not fit a binding stay in the fused kernel`, async (t) => {
    // 2 images × 2 heads × 300² weights are 1.44 MB; qkv [2, 384, 300] 0.92 MB fits the lowered limit.
    const engine = await createEngine({ device: e.device, maxBindingBytes: 1_000_000 });
    t.notOk(ops.attentionMaterialisesWeights(engine, 64, false, { T: 300, matrices: 4 }), 'fused');
    const qkv = randomNd([2, 384, 300], 41, -2, 2);
    const err = maxRelError(await ops.qkvAttention(upload(engine, qkv), 2, legacy).read(), qkvAttentionRef(qkv, 2, legacy).data);
    t.ok(err < 1e-5, `${err.toExponential(2)}`);
    engine.dispose();
  });
  // CPU adapters train through the materialised weights; where they would not fit a binding that
  // was refused (pretraining and DifFeed's pass 2 of a model with attention at 64² could not run).
  t.test(`qkvAttention backward, ${order}: weights that would not fit a binding train through the fused backward`, async (t) => {
    // 2 images × 2 heads × 60² weights are 57,600 bytes; qkv [2, 24, 60] 11,520.
    const engine = await createEngine({ device: e.device, maxBindingBytes: 40_000, tuning: { attention: { fusedBackward: 0 } } });
    t.notOk(ops.attentionMaterialisesWeights(engine, 4, true, { T: 60, matrices: 4 }), 'fused');
    const qkv = randomNd([2, 24, 60], 43, -1.5, 1.5);
    const { worst } = await gradCheck(engine, (a) => ops.qkvAttention(a, 2, legacy), (a: Nd) => qkvAttentionRef(a, 2, legacy), [qkv], { maxCoords: 60 });
    t.ok(worst < 1e-3, `${worst.toExponential(2)}`);
    engine.dispose();
  });
  for (const [path, engine] of paths) {
    t.test(`qkvAttention backward (${path}), ${order}, matches finite differences`, async (t) => {
      t.equal(ops.attentionMaterialisesWeights(engine, 4, true, { T: 6, matrices: 4 }), path === 'composite', 'the path under test is the one taken');
      // Head sizes on the vec4 (4, 64) and scalar (6) channel paths; 19 keys span two key tiles,
      // 70 queries two workgroups of queries.
      for (const [heads, d, T] of [[2, 4, 6], [1, 6, 19], [1, 4, 70], [1, 64, 20]]) {
        const qkv = randomNd([2, 3 * heads * d, T], 5 + T, -1.5, 1.5);
        const { worst } = await gradCheck(engine, (a) => ops.qkvAttention(a, heads, legacy), (a: Nd) => qkvAttentionRef(a, heads, legacy), [qkv], { maxCoords: 60 });
        t.ok(worst < 1e-3, `heads ${heads}, d ${d}, T ${T}: ${worst.toExponential(2)}`);
      }
    });
  }
}

// Tuning attention.fusedForward picks the inference path against the default: 0 materialises the
// weights even for 7 tokens (not a multiple of 4), 1 keeps 64 tokens fused; either matches float64.
t.test('qkvAttention: tuning attention.fusedForward chooses the inference path', async (t) => {
  for (const [fusedForward, T] of [[0, 7], [1, 64]]) {
    const engine = await createEngine({ device: e.device, tuning: { attention: { fusedForward } } });
    t.equal(ops.attentionMaterialisesWeights(engine, 8, false, { T, matrices: 4 }), fusedForward === 0, `fusedForward ${fusedForward}, T ${T}: ${fusedForward ? 'fused' : 'matmul + softmax'}`);
    const qkv = randomNd([2, 48, T], 90 + T, -2, 2);
    const err = maxRelError(await ops.qkvAttention(upload(engine, qkv), 2).read(), qkvAttentionRef(qkv, 2, true).data);
    t.ok(err < 1e-5, `fusedForward ${fusedForward}, T ${T}: ${err.toExponential(2)}`);
    engine.dispose();
  }
  const tooBig = await createEngine({ device: e.device, maxBindingBytes: 1000, tuning: { attention: { fusedForward: 0 } } });
  t.notOk(ops.attentionMaterialisesWeights(tooBig, 8, false, { T: 64, matrices: 4 }), 'weights over the binding limit stay fused whatever the tuning');
  tooBig.dispose();
});

// The fused kernels' grid has a y per (image, head) and the composite path's matmuls a z per one:
// 70,000 images of one head were refused ("attention.d4: 1 × 70000 × 1 workgroups"; with T = 4,
// "matmul: batch 70000 exceeds 65535").
t.test('attention over more (image, head) pairs than a grid dimension holds matches float64', async (t) => {
  const N = e.limits.maxComputeWorkgroupsPerDimension + 3;
  for (const T of [1, 4]) {
    const x: Nd = randomNd([N, 6, T], 17 + T, -1, 1);
    const y = await ops.qkvAttention(upload(e, x), 1).read();
    const want = qkvAttentionRef(x, 1, true);
    const err = maxRelError(y, want.data);
    t.ok(err < 1e-5, `T = ${T}: max rel err ${err.toExponential(2)}`);
  }
});
