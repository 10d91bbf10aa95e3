import t from 'tap';
import { GPU_TILINGS } from '../../kernels/matmul.wgsl.ts';
import { createEngine, ops } from '../../src/index.ts';
import { maxRelError, randomNd, testEngine, upload } from '../helpers/check.ts';
import { groupNormRef, type Nd } from '../helpers/reference.ts';

const e = await testEngine();

// A thread summing a whole long row in one f32 chain loses about √n·2⁻²⁴ of its magnitude (CPU
// adapters run a thread per row: GroupNorm's rows at 256² hold 262,144 values). The kernels sum
// blocks of SUM_BLOCK values apart and then join them (kernels/row-reduction.ts), so rows of 2¹⁶
// values stay within 1e-6 of float64 where one chain was 2–3e-6 off and worse on longer rows.
// Data with |mean| ≫ std, as activations often are, make the rounding show.

const TOLERANCE = 1e-6;

/** Per-row mean and 1/sqrt(var + eps) of x viewed as [rows, D], in float64. */
function rowStats(x: Nd, D: number, eps: number) {
  const rows = x.data.length / D;
  return Array.from({ length: rows }, (_, r) => {
    let s = 0;
    for (let i = 0; i < D; i++) s += x.data[r * D + i];
    const mean = s / D;
    let v = 0;
    for (let i = 0; i < D; i++) v += (x.data[r * D + i] - mean) ** 2;
    return { mean, rstd: 1 / Math.sqrt(v / D + eps) };
  });
}

/** dx of y = (x − mean)·rstd per row for upstream g, in float64: rstd·(g − mean(g) − x̂·mean(g·x̂)). */
function normalizeBackwardRef(x: Nd, g: Nd, D: number, eps: number): Float64Array {
  const dx = new Float64Array(x.data.length);
  rowStats(x, D, eps).forEach(({ mean, rstd }, r) => {
    let sg = 0;
    let sgx = 0;
    for (let i = 0; i < D; i++) {
      sg += g.data[r * D + i];
      sgx += g.data[r * D + i] * (x.data[r * D + i] - mean) * rstd;
    }
    for (let i = 0; i < D; i++) dx[r * D + i] = rstd * (g.data[r * D + i] - sg / D - (x.data[r * D + i] - mean) * rstd * (sgx / D));
  });
  return dx;
}

t.test('groupNorm on rows of 65,536 values (a thread per row) matches float64 within 1e-6, forward and backward', async (t) => {
  // [1, 64, 128, 128] in 32 groups: 32 rows of 2 × 16,384 values.
  const shape = [1, 64, 128, 128];
  const x = randomNd(shape, 61, 2.5, 3.5);
  const gamma = { data: new Float64Array(64).fill(1), shape: [64] };
  const beta = { data: new Float64Array(64), shape: [64] };
  const g = randomNd(shape, 62, 0.5, 1.5);
  const xt = upload(e, x, true);
  const y = ops.groupNorm(xt, upload(e, gamma), upload(e, beta), { groups: 32 });
  const forward = maxRelError(await y.read(), groupNormRef(x, gamma, beta, 32, 1e-5).data);
  t.ok(forward < TOLERANCE, `forward: ${forward.toExponential(2)}`);
  e.tape.backward(ops.sum(ops.mul(y, upload(e, g))));
  const backward = maxRelError(await xt.grad!.read(), normalizeBackwardRef(x, g, 2 * 128 * 128, 1e-5));
  t.ok(backward < TOLERANCE, `input gradient: ${backward.toExponential(2)}`);
});

t.test('normalizeRows (LayerNorm) on 16 rows of 65,536 values matches float64 within 1e-6, forward and backward', async (t) => {
  const D = 65536;
  const x = randomNd([16, D], 63, 4.5, 5.5);
  const g = randomNd([16, D], 64, 0.5, 1.5);
  const xt = upload(e, x, true);
  const y = ops.normalizeRows(xt, D);
  const stats = rowStats(x, D, 1e-5);
  const ref = x.data.map((v, i) => (v - stats[Math.floor(i / D)].mean) * stats[Math.floor(i / D)].rstd);
  const forward = maxRelError(await y.read(), ref);
  t.ok(forward < TOLERANCE, `forward: ${forward.toExponential(2)}`);
  e.tape.backward(ops.sum(ops.mul(y, upload(e, g))));
  const backward = maxRelError(await xt.grad!.read(), normalizeBackwardRef(x, g, D, 1e-5));
  t.ok(backward < TOLERANCE, `input gradient: ${backward.toExponential(2)}`);
});

t.test('sum over 2¹⁸ values matches float64 within 1e-6 in each reduce kernel', async (t) => {
  // [16, 2¹⁸] over axis 1: a thread per row, as vec4s; [2, 2¹⁸] over axis 1: a workgroup per row;
  // [2¹⁸, 16] over axis 0: a thread per output column.
  for (const [label, shape, axis] of [['a thread per row', [16, 1 << 18], 1], ['a workgroup per row', [2, 1 << 18], 1], ['a thread per column', [1 << 18, 16], 0]] as const) {
    const x = randomNd([...shape], 65, 0.5, 1.5);
    const [rows, cols] = shape;
    const ref = axis === 1
      ? Float64Array.from({ length: rows }, (_, r) => x.data.subarray(r * cols, (r + 1) * cols).reduce((s, v) => s + v, 0))
      : Float64Array.from({ length: cols }, (_, c) => {
        let s = 0;
        for (let r = 0; r < rows; r++) s += x.data[r * cols + c];
        return s;
      });
    const err = maxRelError(await ops.sum(upload(e, x), [axis]).read(), ref);
    t.ok(err < TOLERANCE, `${label}: ${err.toExponential(2)}`);
  }
});

t.test('adaptiveAvgPool2d of a 256² map to 1×1 (65,536 values a window) matches float64 within 1e-6', async (t) => {
  const x = randomNd([1, 2, 256, 256], 66, 2.5, 3.5);
  const ref = [0, 1].map((p) => x.data.subarray(p * 65536, (p + 1) * 65536).reduce((s, v) => s + v, 0) / 65536);
  const err = maxRelError(await ops.adaptiveAvgPool2d(upload(e, x), 1, 1).read(), Float64Array.from(ref));
  t.ok(err < TOLERANCE, `${err.toExponential(2)}`);
});

// matmul summed each output's whole K in one f32 chain: 2.2e-5 off float64 at K = 2¹⁸ (a linear
// probe's logits on unpooled maps) and 1.9e-4 at 1e6, where PyTorch's CPU matmul is 1.2e-6 off
// (its BLAS blocks K). Positive data, so no cancellation hides the rounding. Expected: float64.
t.test('matmul over a long K (2¹⁸, all four transposes, with bias and a batch) stays within 5e-6 of float64', async (t) => {
  const K = 1 << 18;
  const [M, N] = [3, 5];
  const a = Float32Array.from({ length: M * K }, (_, i) => 0.5 + ((i * 7919) % 1000) / 1000);
  const b = Float32Array.from({ length: K * N }, (_, i) => 0.5 + ((i * 104729) % 997) / 997);
  const bias = [0.25, -1, 2, 0, 3];
  const want = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = bias[n];
      for (let k = 0; k < K; k++) s += a[m * K + k] * b[k * N + n];
      want[m * N + n] = s;
    }
  }
  const transpose = (x: Float32Array, rows: number, cols: number) => Float32Array.from({ length: x.length }, (_, i) => x[(i % rows) * cols + Math.floor(i / rows)]);
  for (const [transA, transB] of [[false, false], [true, false], [false, true], [true, true]]) {
    const A = e.tensor(transA ? transpose(a, M, K) : a, transA ? [K, M] : [M, K], 'a');
    const B = e.tensor(transB ? transpose(b, K, N) : b, transB ? [N, K] : [K, N], 'b');
    const biasT = e.tensor(bias, [N], 'bias');
    const live = e.memoryStats().liveBytes;
    const y = ops.matmul(A, B, { transA, transB, bias: biasT });
    const got = await y.read();
    const err = Math.max(...Array.from(want, (w, i) => Math.abs(got[i] - w) / Math.abs(w)));
    t.ok(err < 5e-6, `transA ${transA}, transB ${transB}: worst relative error ${err.toExponential(2)}`);
    t.equal(y.label, 'matmul(a,b)', 'the result is labelled as any matmul\'s');
    y.dispose();
    t.equal(e.memoryStats().liveBytes, live, 'nothing but the result stayed allocated');
    for (const x of [A, B, biasT]) x.dispose();
  }
  // A batch of two, the second A scaled by 2: each batch entry its own chunks.
  const A2 = e.tensor(Float32Array.from([...a, ...a.map((v) => 2 * v)]), [2, M, K], 'a2');
  const B2 = e.tensor(Float32Array.from([...b, ...b]), [2, K, N], 'b2');
  const got = await ops.matmul(A2, B2).read();
  const err = Math.max(...Array.from(got, (g, i) => {
    const w = (want[i % (M * N)] - bias[i % N]) * (i < M * N ? 1 : 2);
    return Math.abs(g - w) / Math.abs(w);
  }));
  t.ok(err < 5e-6, `batched: worst relative error ${err.toExponential(2)}`);
});

// Softmax's running sum of exp(x − max) was one f32 chain over a thread's whole row (a thread per
// row on CPU adapters, 16 rows and more): 7.5e-4 off float64 at 262,143 values in [5, 5.002] and
// its log 6e-5, the backward's Σ dy·y 2.2e-3, where PyTorch 1.13's CPU float32 is 2.2e-6, 2.1e-7
// and 6.7e-6 off (7.0e-6 for log-softmax's gradient). Values close together make every exp near
// 1, so the chain's rounding shows. Expected: float64.
t.test('softmax and logSoftmax on 16 rows of 262,143 and 262,144 values stay within float32 rounding of float64, forward and backward', async (t) => {
  for (const D of [262143, 262144]) {
    const x = randomNd([16, D], 67, 5, 5.002);
    const g = randomNd([16, D], 68, 0.5, 1.5);
    const soft = new Float64Array(x.data.length);
    const logSoft = new Float64Array(x.data.length);
    const softGrad = new Float64Array(x.data.length);
    const logGrad = new Float64Array(x.data.length);
    for (let r = 0; r < 16; r++) {
      const row = x.data.subarray(r * D, (r + 1) * D);
      const m = row.reduce((a, v) => Math.max(a, v), -Infinity);
      const s = row.reduce((a, v) => a + Math.exp(v - m), 0);
      let gy = 0;
      let gSum = 0;
      for (let i = 0; i < D; i++) {
        soft[r * D + i] = Math.exp(row[i] - m) / s;
        logSoft[r * D + i] = row[i] - m - Math.log(s);
        gy += g.data[r * D + i] * soft[r * D + i];
        gSum += g.data[r * D + i];
      }
      for (let i = 0; i < D; i++) {
        softGrad[r * D + i] = soft[r * D + i] * (g.data[r * D + i] - gy);
        logGrad[r * D + i] = g.data[r * D + i] - soft[r * D + i] * gSum;
      }
    }
    for (const [name, op, forwardRef, gradRef, tolerance] of [['softmax', ops.softmax, soft, softGrad, 1e-5], ['logSoftmax', ops.logSoftmax, logSoft, logGrad, 1e-6]] as const) {
      const xt = upload(e, x, true);
      const y = op(xt);
      const forward = maxRelError(await y.read(), forwardRef);
      t.ok(forward < tolerance, `${name}, rows of ${D}: forward ${forward.toExponential(2)}`);
      e.tape.backward(ops.sum(ops.mul(y, upload(e, g))));
      const backward = maxRelError(await xt.grad!.read(), gradRef);
      t.ok(backward < 2e-5, `${name}, rows of ${D}: input gradient ${backward.toExponential(2)}`);
    }
  }
});

/** dw[co, ci] = Σ over batches and pixels of dy[n, co, p]·x[n, ci, p] (a 1×1 conv's weight gradient), in float64. */
function pointwiseWeightGradRef(x: Nd, dy: Nd): Float64Array {
  const [N, cin, H, W] = x.shape;
  const cout = dy.shape[1];
  const P = H * W;
  const dw = new Float64Array(cout * cin);
  for (let n = 0; n < N; n++) {
    for (let co = 0; co < cout; co++) {
      const g = dy.data.subarray((n * cout + co) * P, (n * cout + co + 1) * P);
      for (let ci = 0; ci < cin; ci++) {
        const v = x.data.subarray((n * cin + ci) * P, (n * cin + ci + 1) * P);
        let s = 0;
        for (let p = 0; p < P; p++) s += g[p] * v[p];
        dw[co * cin + ci] += s;
      }
    }
  }
  return dw;
}

/** The weight gradient of a 1×1 conv of x for upstream dy, as `engine` computes it. */
async function pointwiseWeightGrad(x: Nd, dy: Nd, engine = e): Promise<Float32Array> {
  const [, cin] = x.shape;
  const cout = dy.shape[1];
  const w = upload(engine, randomNd([cout, cin, 1, 1], 69), true);
  engine.tape.backward(ops.conv2d(upload(engine, x), w), upload(engine, dy));
  return w.grad!.read();
}

// A 1×1 conv's weight gradient (on CPU adapters one subgroup GEMM summing every image; the tiled
// GEMM kernel, as on GPUs, in one split of the whole batch where its output tiles were many)
// added up the batch's N·H·W pixels in one f32 chain: 1.6e-5 off float64 for [32, 16, 64, 64] of
// positive data in both, where PyTorch 1.13's CPU float32 is 5.2e-7 off. Expected: float64.
t.test('the 1×1 conv weight gradient over 32 × 64² pixels stays within 2e-6 of float64, in both GEMM kernels', async (t) => {
  const x = randomNd([32, 16, 64, 64], 70, 0, 1);
  const dy = randomNd([32, 16, 64, 64], 71, 0, 1);
  const ref = pointwiseWeightGradRef(x, dy);
  const tiled = await createEngine({ device: e.device, tuning: { conv2d: GPU_TILINGS.large } });
  for (const [kernel, engine] of [['default', e], ['tiled GEMM, GPU tiles', tiled]] as const) {
    const err = maxRelError(await pointwiseWeightGrad(x, dy, engine), ref);
    t.ok(err < 2e-6, `${kernel}: ${err.toExponential(2)}`);
  }
  await tiled.dispose();
});

/** dw[co, ci, ky, kx] of a 3×3, padding-1 conv of x for upstream dy, in float64. */
function conv3x3WeightGradRef(x: Nd, dy: Nd): Float64Array {
  const [N, cin, H, W] = x.shape;
  const cout = dy.shape[1];
  const dw = new Float64Array(cout * cin * 9);
  for (let n = 0; n < N; n++) {
    for (let co = 0; co < cout; co++) {
      for (let ci = 0; ci < cin; ci++) {
        for (let ky = 0; ky < 3; ky++) {
          for (let kx = 0; kx < 3; kx++) {
            let s = 0;
            for (let y = Math.max(0, 1 - ky); y < Math.min(H, H + 1 - ky); y++) {
              const g = (n * cout + co) * H * W + y * W;
              const v = (n * cin + ci) * H * W + (y + ky - 1) * W + kx - 1;
              for (let xx = Math.max(0, 1 - kx); xx < Math.min(W, W + 1 - kx); xx++) s += dy.data[g + xx] * x.data[v + xx];
            }
            dw[((co * cin + ci) * 3 + ky) * 3 + kx] += s;
          }
        }
      }
    }
  }
  return dw;
}

// A 3×3 conv's weight gradient through Winograd (CPU adapters) sums the batch's 2×2 tiles in GEMMs
// over chunks of tiles, one f32 chain per output and chunk: chunks as large as a binding holds
// (all 131,072 tiles here) were 8.7e-6 off float64 for positive data, the direct conv's split sums
// 8e-7. Chunks now hold at most LONG_K tiles. Expected: float64.
t.test('the 3×3 conv weight gradient over 128 × 64² pixels stays within 2e-6 of float64, through Winograd and the direct GEMM', async (t) => {
  const x = randomNd([128, 4, 64, 64], 74, 0, 1);
  const dy = randomNd([128, 4, 64, 64], 75, 0, 1);
  const ref = conv3x3WeightGradRef(x, dy);
  for (const enabled of [1, 0] as const) {
    const engine = await createEngine({ device: e.device, tuning: { conv2dWinograd: { enabled } } });
    const w = upload(engine, randomNd([4, 4, 3, 3], 76), true);
    engine.tape.backward(ops.conv2d(upload(engine, x), w), upload(engine, dy));
    const err = maxRelError(await w.grad!.read(), ref);
    t.ok(err < 2e-6, `${enabled ? 'Winograd' : 'direct GEMM'}: ${err.toExponential(2)}`);
    await engine.dispose();
  }
});

// The splits of a long 1×1 weight gradient: images of 4,100 pixels (past K_CHUNK) in two parts
// each, the second shorter; images of 144 pixels 28 to a split, the last split 8 images.
t.test('the 1×1 conv weight gradient split within images and across them matches float64', async (t) => {
  for (const [shape, what] of [[[5, 8, 50, 82], 'two parts an image'], [[120, 8, 12, 12], '28 images a split']] as const) {
    const x = randomNd([...shape], 72, -1, 1);
    const dy = randomNd([shape[0], 12, shape[2], shape[3]], 73, -1, 1);
    const err = maxRelError(await pointwiseWeightGrad(x, dy), pointwiseWeightGradRef(x, dy));
    t.ok(err < 1e-5, `${what}: ${err.toExponential(2)}`);
  }
});
