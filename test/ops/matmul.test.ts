import t from 'tap';
import { chooseGemmTiling, DEFAULT_MATMUL_TILING, GPU_TILINGS, vectorizableGemm } from '../../kernels/matmul.wgsl.ts';
import { createEngine, ops } from '../../src/index.ts';
import { gradCheck, maxRelError, randomNd, testEngine, upload } from '../helpers/check.ts';
import { broadcast, matmulRef, type Nd } from '../helpers/reference.ts';

const e = await testEngine();

// [shape of A as stored, shape of B as stored, transA, transB]
const cases: [number[], number[], boolean, boolean][] = [
  [[1, 1], [1, 1], false, false],
  [[5, 7], [7, 3], false, false],
  [[33, 65], [65, 31], false, false],
  [[65, 33], [65, 31], true, false],
  [[33, 65], [31, 65], false, true],
  [[65, 33], [31, 65], true, true],
  [[3, 17, 9], [3, 9, 20], false, false],
  [[3, 17, 9], [9, 20], false, false],
  [[17, 9], [2, 2, 9, 20], false, false],
  [[130, 257], [257, 70], false, false],
  // At most 16 columns (lavapipe's 64 × 16 tile): batched, rows past one tile, either transpose.
  [[2, 70, 33], [2, 33, 13], false, false],
  [[2, 33, 70], [2, 16, 33], true, true],
  // Every contiguous extent a multiple of 4 (the vec4 kernel), none a multiple of a tile: each
  // transpose, batched, broadcast, and K shorter than one slab.
  [[36, 68], [68, 44], false, false],
  [[68, 36], [68, 44], true, false],
  [[36, 68], [44, 68], false, true],
  [[68, 36], [44, 68], true, true],
  [[3, 20, 12], [12, 132], false, false],
  [[2, 12, 76], [2, 20, 12], true, true],
  // N at least 4M: on lavapipe the subgroup GEMM's grid walks row blocks first (subgroupGemmOrder);
  // three row blocks, several column blocks, batched.
  [[2, 72, 36], [2, 36, 292], false, false],
  [[2, 36, 72], [2, 292, 36], true, true],
];

for (const [sa, sb, ta, tb] of cases) {
  t.test(`matmul ${sa}${ta ? 'ᵀ' : ''} × ${sb}${tb ? 'ᵀ' : ''} matches float64`, async (t) => {
    const a = randomNd(sa, 1);
    const b = randomNd(sb, 2);
    const y = ops.matmul(upload(e, a), upload(e, b), { transA: ta, transB: tb });
    const ref = matmulRef(a, b, ta, tb);
    t.same(y.shape, ref.shape);
    const err = maxRelError(await y.read(), ref.data);
    t.ok(err < 1e-5, `max rel err ${err.toExponential(2)}`);
  });
}

t.test('matmul 256x512 · 512x384 (several tiles, awkward N) matches float64', async (t) => {
  const a = randomNd([256, 512], 3);
  const b = randomNd([512, 384], 4);
  const err = maxRelError(await ops.matmul(upload(e, a), upload(e, b)).read(), matmulRef(a, b).data);
  t.ok(err < 1e-5, `${err}`);
});

for (const [sa, sb, ta, tb] of [...cases.slice(1, 9), ...cases.slice(-6, -2)]) {
  t.test(`matmul backward ${sa}${ta ? 'ᵀ' : ''} × ${sb}${tb ? 'ᵀ' : ''} matches finite differences`, async (t) => {
    const { worst } = await gradCheck(
      e,
      (a, b) => ops.matmul(a, b, { transA: ta, transB: tb }),
      (a: Nd, b: Nd) => matmulRef(a, b, ta, tb),
      [randomNd(sa, 5), randomNd(sb, 6)],
    );
    t.ok(worst < 1e-3, `${worst.toExponential(2)}`);
  });
}

t.test('matmul backward with 13 columns over 70 rows (the 64 × 16 tile on lavapipe) matches finite differences', async (t) => {
  t.same(chooseGemmTiling(70, 13, 'lavapipe'), { wgX: 2, wgY: 8, tm: 8, tn: 8, tk: 16 }, 'lavapipe picks the 64 × 16 tile for this shape');
  const { worst } = await gradCheck(e, (a, b) => ops.matmul(a, b, { transA: true }), (a: Nd, b: Nd) => matmulRef(a, b, true, false), [randomNd([2, 9, 70], 7), randomNd([2, 9, 13], 8)]);
  t.ok(worst < 1e-3, `${worst.toExponential(2)}`);
});

t.test('lavapipe\'s narrow tiles (32 rows × ≤ 16 columns; ≤ 16 rows × many columns, as in a probe stack) match finite differences', async (t) => {
  t.same(chooseGemmTiling(32, 10, 'lavapipe'), { wgX: 2, wgY: 4, tm: 8, tn: 8, tk: 16 }, '32 × 16 tile for 32 rows');
  t.same(chooseGemmTiling(10, 100, 'lavapipe'), { wgX: 8, wgY: 2, tm: 8, tn: 8, tk: 16 }, '16 × 64 tile for 10 rows');
  // [2, 32, 70] × [2, 10, 70]ᵀ: the forward (32 × 10) takes the 32-row tile, B's gradient dCᵀ·A (10 × 70) the 16-row one.
  const { worst } = await gradCheck(e, (a, b) => ops.matmul(a, b, { transB: true }), (a: Nd, b: Nd) => matmulRef(a, b, false, true), [randomNd([2, 32, 70], 9), randomNd([2, 10, 70], 10)]);
  t.ok(worst < 1e-3, `${worst.toExponential(2)}`);
  const a = randomNd([2, 10, 9], 11);
  const b = randomNd([2, 9, 100], 12);
  const err = maxRelError(await ops.matmul(upload(e, a), upload(e, b)).read(), matmulRef(a, b).data);
  t.ok(err < 1e-5, `10 × 100 output: ${err.toExponential(2)}`);
});

// An empty family turned the subgroup GEMM off for a generic tile (512³ on lavapipe: 15.5 → 67.8 ms);
// a partial one takes the generic tile's sizes, the ones the engine checked against the device.
t.test('a tuning that leaves tile sizes out takes the generic tile\'s for them; an empty family is no tuning', async (t) => {
  t.same(chooseGemmTiling(1024, 1024, 'lavapipe', { tk: 32 }), { ...DEFAULT_MATMUL_TILING, tk: 32 });
  t.same(chooseGemmTiling(1024, 1024, 'gpu', { tm: 4 }), { ...DEFAULT_MATMUL_TILING, tm: 4 });
  t.same(chooseGemmTiling(1024, 1024, 'lavapipe', {}), chooseGemmTiling(1024, 1024, 'lavapipe'));
  const empty = await createEngine({ tuning: { matmul: {}, conv2d: {}, rows: { subgroups: 0 } } });
  t.teardown(() => empty.dispose());
  t.same(empty.tuning, { rows: { subgroups: 0 } }, 'the empty families are dropped; the engine keeps its built-in kernels for them');
});

t.test('the vec4 kernel is chosen exactly when every contiguous extent is a multiple of 4', async (t) => {
  const tile = DEFAULT_MATMUL_TILING;
  t.ok(vectorizableGemm(36, 44, 68, false, false, tile), 'A along K = 68, B and C along N = 44');
  t.ok(vectorizableGemm(36, 44, 68, true, true, tile), 'Aᵀ along M = 36, Bᵀ along K = 68');
  t.notOk(vectorizableGemm(36, 44, 66, false, false, tile), 'K = 66');
  t.notOk(vectorizableGemm(35, 44, 68, true, false, tile), 'Aᵀ along M = 35');
  t.notOk(vectorizableGemm(36, 42, 68, false, true, tile), 'C along N = 42');
  t.notOk(vectorizableGemm(36, 44, 68, false, false, { ...tile, tm: 2 }), '2 rows per thread');
});

t.test('matmul with bias over a multiple of 4 columns (vec4 bias) matches float64', async (t) => {
  const a = randomNd([2, 9, 16], 13);
  const w = randomNd([16, 20], 14);
  const bias = randomNd([20], 15);
  const y = ops.matmul(upload(e, a), upload(e, w), { bias: upload(e, bias) });
  const ref = broadcast(matmulRef(a, w), bias, (p, q) => p + q);
  t.ok(maxRelError(await y.read(), ref.data) < 1e-5);
});

// Its size alone was checked: a [2, 2] bias of an N = 4 product was taken as a row of 4.
t.test('matmul takes a bias of shape [N] or [1, …, N] only', async (t) => {
  const a = e.tensor(new Float32Array(6), [3, 2]);
  const b = e.tensor(new Float32Array(8), [2, 4]);
  t.throws(() => ops.matmul(a, b, { bias: e.zeros([2, 2], 'bias') }), /matmul: bias \[2,2\] does not match N = 4/);
  t.doesNotThrow(() => ops.matmul(a, b, { bias: e.zeros([1, 4]) }).dispose());
});

t.test('matmul with bias: forward and the bias gradient', async (t) => {
  const a = randomNd([6, 5], 1);
  const w = randomNd([5, 4], 2);
  const bias = randomNd([4], 3);
  const ref = (x: Nd, y: Nd, z: Nd) => broadcast(matmulRef(x, y), z, (p, q) => p + q);
  const y = ops.matmul(upload(e, a), upload(e, w), { bias: upload(e, bias) });
  t.ok(maxRelError(await y.read(), ref(a, w, bias).data) < 1e-5);
  const { worst } = await gradCheck(e, (x, y, z) => ops.matmul(x, y, { bias: z }), ref, [a, w, bias]);
  t.ok(worst < 1e-3, `${worst}`);
});

t.test('mismatched inner sizes name both operands', async (t) => {
  t.throws(() => ops.matmul(upload(e, randomNd([2, 3], 1)), upload(e, randomNd([4, 5], 1))), /inner sizes 3 vs 4/);
});

// GPUs' tiles (chooseGemmTiling's 'gpu' presets), run here through the tuning: each transpose on the
// vec4 and the scalar kernel, batched, with partial tiles on every edge, and the backward.
for (const [size, tiling] of Object.entries(GPU_TILINGS)) {
  t.test(`the GPU tiles (${size}: ${tiling.wgX}×${tiling.wgY} threads of ${tiling.tm}×${tiling.tn}) match float64 and finite differences`, async (t) => {
    t.same(chooseGemmTiling(size === 'large' ? 130 : 40, size === 'large' ? 70 : 100, 'gpu'), tiling, 'the GPU rule picks them for this output');
    const engine = await createEngine({ device: e.device, tuning: { matmul: tiling } });
    for (const [sa, sb, ta, tb] of [[[130, 257], [257, 70], false, false], [[2, 257, 132], [2, 68, 257], true, true], [[2, 68, 36], [36, 100], false, false], [[100, 68], [76, 68], false, true]] as const) {
      const a = randomNd([...sa], 21);
      const b = randomNd([...sb], 22);
      const y = ops.matmul(upload(engine, a), upload(engine, b), { transA: ta, transB: tb });
      const err = maxRelError(await y.read(), matmulRef(a, b, ta, tb).data);
      t.ok(err < 1e-5, `${sa}${ta ? 'ᵀ' : ''} × ${sb}${tb ? 'ᵀ' : ''}: ${err.toExponential(2)}`);
    }
    const { worst } = await gradCheck(engine, (a, b) => ops.matmul(a, b), (a: Nd, b: Nd) => matmulRef(a, b), [randomNd([70, 9], 23), randomNd([9, 66], 24)]);
    t.ok(worst < 1e-3, `backward: ${worst.toExponential(2)}`);
    engine.dispose();
  });
}

// The subgroup GEMM (kernels/matmul-subgroup.wgsl.ts), the default on lavapipe wherever every
// contiguous extent is a multiple of 4: each transpose; 8, 16 and 32 rows a workgroup with a
// partial last one; partial column groups; K not a multiple of 4 where no operand is contiguous
// in K; batched, broadcast, with bias. It must match float64 and, summing in the same order,
// equal the register-tiled kernel bit for bit.
t.test('the subgroup GEMM matches float64 and the register-tiled kernel, forward and backward', { skip: !e.subgroupMatmul && 'this adapter has no 8-lane subgroups' }, async (t) => {
  if (e.adapterClass === 'llvmpipe') t.ok(e.subgroupMatmul, 'lavapipe runs the subgroup GEMM by default');
  const tiled = await createEngine({ device: e.device, tuning: { matmulSubgroup: { enabled: 0 } } });
  t.notOk(tiled.subgroupMatmul, 'the tuning turns it off');
  const shapes: [number[], number[], boolean, boolean][] = [
    [[36, 68], [68, 44], false, false],
    [[68, 36], [68, 44], true, false],
    [[36, 68], [44, 68], false, true],
    [[68, 36], [44, 68], true, true],
    [[4, 12], [12, 20], false, false],
    [[12, 8], [12, 100], true, false],
    [[13, 68], [13, 36], true, false],
    [[3, 20, 12], [12, 132], false, false],
    [[2, 12, 76], [2, 20, 12], true, true],
    [[76, 12], [3, 12, 40], false, false],
  ];
  for (const [sa, sb, ta, tb] of shapes) {
    const a = randomNd(sa, 31);
    const b = randomNd(sb, 32);
    const y = await ops.matmul(upload(e, a), upload(e, b), { transA: ta, transB: tb }).read();
    const yTiled = await ops.matmul(upload(tiled, a), upload(tiled, b), { transA: ta, transB: tb }).read();
    const label = `${sa}${ta ? 'ᵀ' : ''} × ${sb}${tb ? 'ᵀ' : ''}`;
    t.ok(maxRelError(y, matmulRef(a, b, ta, tb).data) < 1e-5, `${label}: float64`);
    t.ok(y.every((v, i) => Object.is(v, yTiled[i])), `${label}: identical to the register-tiled kernel`);
  }
  const bias = randomNd([44], 33);
  const [a, w] = [randomNd([2, 9, 68], 34), randomNd([68, 44], 35)];
  const yb = await ops.matmul(upload(e, a), upload(e, w), { bias: upload(e, bias) }).read();
  t.ok(maxRelError(yb, broadcast(matmulRef(a, w), bias, (p, q) => p + q).data) < 1e-5, 'with bias');
  for (const [sa, sb, ta, tb] of [shapes[0], shapes[3], shapes[6]]) {
    const { worst } = await gradCheck(e, (x, y) => ops.matmul(x, y, { transA: ta, transB: tb }), (x: Nd, y: Nd) => matmulRef(x, y, ta, tb), [randomNd(sa, 36), randomNd(sb, 37)]);
    t.ok(worst < 1e-3, `backward ${sa}${ta ? 'ᵀ' : ''} × ${sb}${tb ? 'ᵀ' : ''}: ${worst.toExponential(2)}`);
  }
  tiled.dispose();
});

// Batch shapes are left-padded with 1s; the kernels take equal batch shapes, or one operand's all
// 1s (read with batch stride 0), and the output's batch shape is NumPy's broadcast of the two.
t.test('matmul broadcasts an all-1s batch to NumPy\'s batch shape, forward and backward, and refuses other mismatches', async (t) => {
  const a = randomNd([1, 1, 5, 7], 41);
  const b = randomNd([3, 7, 4], 42);
  const ref = (x: Nd, y: Nd) => ({ ...matmulRef(x, y), shape: [1, 3, 5, 4] });
  const y = ops.matmul(upload(e, a), upload(e, b));
  t.same(y.shape, [1, 3, 5, 4], '[1,1,5,7] × [3,7,4] is [1,3,5,4]');
  t.ok(maxRelError(await y.read(), ref(a, b).data) < 1e-5, 'forward matches float64');
  const { perInput } = await gradCheck(e, (x, w) => ops.matmul(x, w), ref, [a, b]);
  perInput.forEach((err, i) => t.ok(err < 1e-3, `gradient ${i}, the broadcast one summed over the batch: ${err.toExponential(2)}`));
  for (const [sa, sb, batchA, batchB] of [
    [[4, 1, 2, 3], [1, 4, 3, 2], '[4,1]', '[1,4]'],
    [[2, 3, 2, 3], [3, 2, 3, 2], '[2,3]', '[3,2]'],
    [[6, 2, 3], [2, 3, 3, 2], '[6]', '[2,3]'],
  ] as const) {
    t.throws(
      () => ops.matmul(upload(e, randomNd([...sa], 43)), upload(e, randomNd([...sb], 44))),
      new RangeError(`matmul: tensor [${sa}] × tensor [${sb}]: batch shapes ${batchA} and ${batchB} are neither equal nor one of them all 1s; expand the operands to a common batch shape first`),
    );
  }
});

// An empty reduction (K = 0) binds A and B of no values, which the vec4 and subgroup kernels
// cannot: the product is zeros plus the bias, also where a backward pass asks for one (the
// gradient of B in [0, 8] × [8, 4] is Aᵀ · dC, [8, 0] × [0, 4]).
t.test('matmul with K = 0 gives zeros plus the bias on every kernel, forward and backward', async (t) => {
  const tiled = await createEngine({ device: e.device, tuning: { matmulSubgroup: { enabled: 0 } } });
  for (const [label, engine] of [['default kernels', e], ['register-tiled kernels', tiled]] as const) {
    for (const [M, N] of [[8, 8], [3, 5]]) {
      // Non-zero values left in the pool, so an unwritten output would show.
      engine.tensor(new Float32Array(M * N).fill(7), [M, N]).dispose();
      const y = ops.matmul(upload(engine, randomNd([M, 0], 45)), upload(engine, randomNd([0, N], 46)));
      t.same(Array.from(await y.read()), new Array(M * N).fill(0), `${label}: [${M},0] × [0,${N}] is zeros`);
      const bias = randomNd([N], 47);
      const biasT = upload(engine, bias, true);
      const yb = ops.matmul(upload(engine, randomNd([2, M, 0], 48)), upload(engine, randomNd([0, N], 49)), { bias: biasT });
      t.same(yb.shape, [2, M, N]);
      t.same(Array.from(await yb.read()), Array.from({ length: 2 * M * N }, (_, i) => Math.fround(bias.data[i % N])), `${label}: plus the bias`);
      engine.tape.backward(ops.sum(yb));
      t.same(Array.from(await biasT.grad!.read()), new Array(N).fill(2 * M), `${label}: the bias gradient`);
    }
    const a = upload(engine, randomNd([0, 8], 50), true);
    const b = upload(engine, randomNd([8, 4], 51), true);
    engine.tensor(new Float32Array(32).fill(7), [8, 4]).dispose();
    engine.tape.backward(ops.sum(ops.matmul(a, b)));
    t.same(Array.from(await b.grad!.read()), new Array(32).fill(0), `${label}: B's gradient through a K = 0 product is zeros`);
  }
  tiled.dispose();
});

// Column blocks past 65,535 (one dimension's workgroups) fold into z; batches and the fold share
// it. The subgroup GEMM covers 64 columns a workgroup (two column groups), the tuned register tile here 8.
t.test('matmul over more than 65535 column blocks folds them into the grid and matches float64', async (t) => {
  const tiled = await createEngine({ device: e.device, tuning: { matmulSubgroup: { enabled: 0 }, matmul: { wgX: 2, wgY: 2, tm: 4, tn: 4, tk: 4 } } });
  // [batch, M, 4] × [4, N], N just past 65,535 blocks (65,537, the last partial, so the second
  // fold ends in a spare block): batched with B broadcast (batch and fold share z), and N not a
  // multiple of 4 (the scalar kernel).
  for (const [label, engine, batch, M, N] of [['subgroup GEMM', e, 1, 4, 65536 * 64 + 4], ['register tile, vec4', tiled, 2, 8, 65536 * 8 + 4], ['register tile, scalar', tiled, 1, 8, 65536 * 8 + 3]] as const) {
    const a = randomNd([batch, M, 4], 52);
    const b = randomNd([4, N], 53);
    const y = await ops.matmul(upload(engine, a), upload(engine, b)).read();
    const err = maxRelError(y, matmulRef(a, b).data);
    t.ok(err < 1e-5, `${label}: [${batch},${M},4] × [4,${N}]: ${err.toExponential(2)}`);
  }
  tiled.dispose();
});

// Row blocks past 65,535 fold into z as well (a linear layer over 2,097,152 tokens): the subgroup
// GEMM's 32 rows a workgroup, the tuned register tile's 2 × 4. M just past the limit, so the second
// fold ends in spare blocks; batched with B broadcast, where batch, column and row folds share z.
t.test('matmul over more than 65535 row blocks folds them into the grid and matches float64', async (t) => {
  const tiled = await createEngine({ device: e.device, tuning: { matmulSubgroup: { enabled: 0 }, matmul: { wgX: 2, wgY: 2, tm: 4, tn: 4, tk: 4 } } });
  for (const [label, engine, batch, M, N] of [['subgroup GEMM', e, 1, 65536 * 32 + 8, 4], ['register tile, vec4', tiled, 2, 65536 * 8 + 4, 4], ['register tile, scalar', tiled, 1, 65536 * 8 + 3, 3]] as const) {
    const K = 4;
    const a = randomNd([batch, M, K], 54);
    const b = randomNd([K, N], 55);
    const y = await ops.matmul(upload(engine, a), upload(engine, b)).read();
    const err = maxRelError(y, matmulRef(a, b).data);
    t.ok(err < 1e-5, `${label}: [${batch},${M},${K}] × [${K},${N}]: ${err.toExponential(2)}`);
  }
  tiled.dispose();
});

// The kernels put one grid z per batch entry, and a grid dimension holds 65535: a bilinear resize of
// 64 images × 1024 channels (a batch of 65536 planes) was refused ("batch 65536 exceeds 65535").
t.test('a batch of more entries than a grid dimension holds runs in chunks (and with one side broadcast)', async (t) => {
  const batch = e.limits.maxComputeWorkgroupsPerDimension + 2;
  // Entry i: [1, i] · [[1], [2]] = 1 + 2i (exact in f32 up to 2²⁴).
  const a = e.tensor(Float32Array.from({ length: 2 * batch }, (_, j) => (j % 2 === 0 ? 1 : Math.floor(j / 2))), [batch, 1, 2], 'a');
  const b = e.tensor(Float32Array.from({ length: 2 * batch }, (_, j) => (j % 2 === 0 ? 1 : 2)), [batch, 2, 1], 'b');
  const y = ops.matmul(a, b);
  t.same(y.shape, [batch, 1, 1]);
  const got = await y.read();
  t.ok(got.every((v, i) => v === 1 + 2 * i), `entries ${got[0]}, ${got[1]}, …, ${got[batch - 1]}`);
  const shared = e.tensor([1, 2], [1, 2], 'shared');
  const z = await ops.matmul(shared, b).read();
  t.ok(z.length === batch && z.every((v) => v === 5), 'A broadcast to every entry: 1·1 + 2·2');
  for (const x of [a, b, y, shared]) x.dispose();
});
