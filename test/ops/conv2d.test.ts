import t from 'tap';
import { GPU_TILINGS } from '../../kernels/matmul.wgsl.ts';
import { createEngine, type Engine, ops } from '../../src/index.ts';
import { gradCheck, maxRelError, randomNd, recordKernelKeys, testEngine, upload } from '../helpers/check.ts';
import { conv2dRef, type Nd } from '../helpers/reference.ts';

const e = await testEngine();

// [name, input shape, weight shape, stride, output H×W (PyTorch: ⌊(H + 2·pad − k) / stride⌋ + 1)]
const cases: [string, number[], number[], number, [number, number]][] = [
  ['3x3 on 2x3x5x7 → 4', [2, 3, 5, 7], [4, 3, 3, 3], 1, [5, 7]],
  ['3x3 on 1x1x1x1 (all padding)', [1, 1, 1, 1], [2, 1, 3, 3], 1, [1, 1]],
  // Widths divisible by 4: Winograd reads whole vec4s of each row (4 tiles an invocation at
  // width 8 and 16, 2 at width 4 and 12), odd heights leaving a patch row past the bottom.
  ['3x3 on 2x3x5x8 → 4 (rows read as vec4s)', [2, 3, 5, 8], [4, 3, 3, 3], 1, [5, 8]],
  ['3x3 on 1x2x3x12 → 3 (rows read as vec4s, 2 tiles a thread)', [1, 2, 3, 12], [3, 2, 3, 3], 1, [3, 12]],
  ['3x3 on 1x2x2x4 → 2 (rows read as vec4s, 2 tiles a thread)', [1, 2, 2, 4], [2, 2, 3, 3], 1, [2, 4]],
  ['3x3 on 1x1x4x16 → 2 (rows read as vec4s)', [1, 1, 4, 16], [2, 1, 3, 3], 1, [4, 16]],
  // On lavapipe the direct 3×3 GEMM then reads each input row once per (channel, kernel row), as
  // a vec4 and its two neighbours: 37 output channels span two 32-row tiles.
  ['3x3 on 2x6x3x8 → 37 (rows read as vec4s, two row tiles)', [2, 6, 3, 8], [37, 6, 3, 3], 1, [3, 8]],
  ['1x1 on 2x5x4x3 → 3', [2, 5, 4, 3], [3, 5, 1, 1], 1, [4, 3]],
  // Channels and pixels multiples of 4: on lavapipe one subgroup GEMM per image (8 and 32 rows).
  ['1x1 on 2x8x4x3 → 6 (a GEMM per image)', [2, 8, 4, 3], [6, 8, 1, 1], 1, [4, 3]],
  ['1x1 on 3x12x2x2 → 36 (a GEMM per image)', [3, 12, 2, 2], [36, 12, 1, 1], 1, [2, 2]],
  ['3x3 stride 2 on 2x3x8x6 → 4 (guided-diffusion\'s Downsample)', [2, 3, 8, 6], [4, 3, 3, 3], 2, [4, 3]],
  ['3x3 stride 2 on 1x2x5x7 → 3 (odd sizes)', [1, 2, 5, 7], [3, 2, 3, 3], 2, [3, 4]],
  ['3x3 stride 3 on 1x2x7x4 → 2', [1, 2, 7, 4], [2, 2, 3, 3], 3, [3, 2]],
  ['1x1 stride 2 on 2x3x5x4 → 2', [2, 3, 5, 4], [2, 3, 1, 1], 2, [3, 2]],
  ['3x3 on 1x70x9x11 → 67 (several tiles)', [1, 70, 9, 11], [67, 70, 3, 3], 1, [9, 11]],
  // Output columns (N·Ho·Wo) at least 4 × the channels: on lavapipe the subgroup GEMM's grid walks
  // row tiles first (subgroupGemmOrder); two row tiles and several column tiles each.
  ['3x3 on 2x4x12x16 → 40 (row tiles first)', [2, 4, 12, 16], [40, 4, 3, 3], 1, [12, 16]],
  ['3x3 stride 2 on 2x4x24x32 → 40 (row tiles first)', [2, 4, 24, 32], [40, 4, 3, 3], 2, [12, 16]],
  ['1x1 on 2x8x12x16 → 40 (a GEMM per image, row tiles first)', [2, 8, 12, 16], [40, 8, 1, 1], 1, [12, 16]],
  ['3x3 stride 2 on 1x70x9x11 → 67 (several tiles)', [1, 70, 9, 11], [67, 70, 3, 3], 2, [5, 6]],
];

// Every case through each algorithm: Winograd F(2×2, 3×3) forced on (3×3 stride 1 only; the rest
// ignore it) and forced off, whatever this adapter's default.
const algorithms = [
  ['Winograd', await createEngine({ device: e.device, tuning: { conv2dWinograd: { enabled: 1 } } })],
  ['direct GEMM', await createEngine({ device: e.device, tuning: { conv2dWinograd: { enabled: 0 } } })],
  // GPUs' 64 × 64 tiles (chooseGemmTiling's 'gpu' presets) where an output fills one (the 67-channel cases).
  ['direct GEMM, GPU tiles', await createEngine({ device: e.device, tuning: { conv2dWinograd: { enabled: 0 }, conv2d: GPU_TILINGS.large } })],
] as const;

for (const [algorithm, engine] of algorithms) {
  for (const [name, xs, ws, , [Ho, Wo]] of cases.filter((c) => c[2][2] === 3 && c[3] === 1)) {
    t.test(`conv2d (${algorithm}) forward ${name} with bias and residual matches float64`, async (t) => {
      const x = randomNd(xs, 1);
      const w = randomNd(ws, 2);
      const b = randomNd([ws[0]], 3);
      const r = randomNd([xs[0], ws[0], Ho, Wo], 4);
      const y = ops.conv2d(upload(engine, x), upload(engine, w), { bias: upload(engine, b), residual: upload(engine, r) });
      t.ok(maxRelError(await y.read(), conv2dRef(x, w, 1, b, r, 1).data) < 1e-5);
      const plain = ops.conv2d(upload(engine, x), upload(engine, w));
      t.ok(maxRelError(await plain.read(), conv2dRef(x, w, 1, undefined, undefined, 1).data) < 1e-5);
    });
    if (xs[1] >= 70) continue;
    t.test(`conv2d (${algorithm}) backward ${name}: every gradient matches finite differences`, async (t) => {
      const { perInput } = await gradCheck(
        engine,
        (x, w, b, r) => ops.conv2d(x, w, { bias: b, residual: r }),
        (x: Nd, w: Nd, b: Nd, r: Nd) => conv2dRef(x, w, 1, b, r, 1),
        [randomNd(xs, 5), randomNd(ws, 6), randomNd([ws[0]], 7), randomNd([xs[0], ws[0], Ho, Wo], 8)],
        { maxCoords: 80 },
      );
      perInput.forEach((err, i) => t.ok(err < 1e-3, `input ${i}: ${err.toExponential(2)}`));
    });
  }
}

for (const [name, xs, ws, stride, [Ho, Wo]] of cases) {
  t.test(`conv2d forward ${name} with bias and residual matches float64`, async (t) => {
    const x = randomNd(xs, 1);
    const w = randomNd(ws, 2);
    const b = randomNd([ws[0]], 3);
    const r = randomNd([xs[0], ws[0], Ho, Wo], 4);
    const pad = (ws[2] - 1) / 2;
    const y = ops.conv2d(upload(e, x), upload(e, w), { bias: upload(e, b), residual: upload(e, r), stride });
    t.same(y.shape, [xs[0], ws[0], Ho, Wo]);
    t.ok(maxRelError(await y.read(), conv2dRef(x, w, pad, b, r, stride).data) < 1e-5);
    const plain = ops.conv2d(upload(e, x), upload(e, w), { stride });
    t.ok(maxRelError(await plain.read(), conv2dRef(x, w, pad, undefined, undefined, stride).data) < 1e-5);
  });
}

for (const [name, xs, ws, stride, [Ho, Wo]] of cases.filter((c) => c[1][1] < 70)) {
  t.test(`conv2d backward ${name}: input, weight, bias and residual gradients match finite differences`, async (t) => {
    const pad = (ws[2] - 1) / 2;
    const { perInput } = await gradCheck(
      e,
      (x, w, b, r) => ops.conv2d(x, w, { bias: b, residual: r, stride }),
      (x: Nd, w: Nd, b: Nd, r: Nd) => conv2dRef(x, w, pad, b, r, stride),
      [randomNd(xs, 5), randomNd(ws, 6), randomNd([ws[0]], 7), randomNd([xs[0], ws[0], Ho, Wo], 8)],
      { maxCoords: 80 },
    );
    perInput.forEach((err, i) => t.ok(err < 1e-3, `input ${i}: ${err.toExponential(2)}`));
  });
}

// dW[co, ci, ky, kx] = Σ_n Σ_(oy,ox) dy[n, co, oy, ox] · x[n, ci, oy·s + ky − pad, ox·s + kx − pad], in float64.
function weightGradRef(x: Nd, dy: Nd, k: number, stride: number): Float64Array {
  const [N, cin, H, W] = x.shape;
  const [, cout, Ho, Wo] = dy.shape;
  const pad = (k - 1) / 2;
  const dw = new Float64Array(cout * cin * k * k);
  for (let n = 0; n < N; n++) for (let co = 0; co < cout; co++) for (let oy = 0; oy < Ho; oy++) for (let ox = 0; ox < Wo; ox++) {
    const g = dy.data[((n * cout + co) * Ho + oy) * Wo + ox];
    for (let ci = 0; ci < cin; ci++) for (let ky = 0; ky < k; ky++) for (let kx = 0; kx < k; kx++) {
      const yy = oy * stride + ky - pad;
      const xx = ox * stride + kx - pad;
      if (yy < 0 || xx < 0 || yy >= H || xx >= W) continue;
      dw[((co * cin + ci) * k + ky) * k + kx] += g * x.data[((n * cin + ci) * H + yy) * W + xx];
    }
  }
  return dw;
}

// A reduction of 8·19·18 = 2,736 pixels at stride 1: with split-K forced on, 2 splits whose last
// one is shorter (and not a whole number of slabs); 67 output channels and 5·k·k columns leave
// partial tiles on both edges. Stride 2 (720 pixels) stays one split.
const weightGradTunings = [
  ['default tiles', {}],
  ['Winograd', { conv2dWinograd: { enabled: 1 } }],
  ['direct GEMM', { conv2dWinograd: { enabled: 0 } }],
  ['split-K forced', { conv2dWinograd: { enabled: 0 }, conv2dWeightGrad: { splitKWorkgroups: 1024 } }],
  ['GPU tiles, split-K forced', { conv2dWinograd: { enabled: 0 }, conv2d: { wgX: 8, wgY: 8, tm: 4, tn: 4, tk: 16 }, conv2dWeightGrad: { splitKWorkgroups: 1024 } }],
] as const;
for (const [label, tuning] of weightGradTunings) {
  for (const [k, stride] of [[3, 1], [3, 2], [1, 1]]) {
    t.test(`conv2d weight gradient over a long reduction (${label}, ${k}x${k} stride ${stride}) matches float64`, async (t) => {
      const engine = await createEngine({ device: e.device, tuning });
      const x = randomNd([8, 5, 19, 18], 11);
      const w = randomNd([67, 5, k, k], 12);
      const Ho = Math.floor((19 - 1) / stride) + 1;
      const Wo = Math.floor((18 - 1) / stride) + 1;
      const dy = randomNd([8, 67, Ho, Wo], 13);
      const xt = upload(engine, x);
      const wt = upload(engine, w, true);
      const y = ops.conv2d(xt, wt, { stride });
      engine.tape.backward(y, upload(engine, dy));
      const err = maxRelError(await wt.grad!.read(), weightGradRef(x, dy, k, stride));
      t.ok(err < 1e-5, `max relative error ${err.toExponential(2)}`);
      engine.dispose();
    });
  }
}

/**
 * The weight gradient of a 3×3 conv from x [N, Cin, H, W] to `cout` channels on `engine`: its
 * largest relative error against float64, and the kernels it ran.
 */
async function narrowWeightGrad(engine: Engine, xs: number[], cout: number, seed: number): Promise<{ err: number; ran: Set<string> }> {
  const ran = recordKernelKeys(engine);
  const x = randomNd(xs, seed);
  const w = randomNd([cout, xs[1], 3, 3], seed + 1);
  const dy = randomNd([xs[0], cout, xs[2], xs[3]], seed + 2);
  const wt = upload(engine, w, true);
  engine.tape.backward(ops.conv2d(upload(engine, x), wt), upload(engine, dy));
  return { err: maxRelError(await wt.grad!.read(), weightGradRef(x, dy, 3, 1)), ran };
}

// On lavapipe the weight gradient of a 3×3 conv with input channels in fours goes through Winograd
// whatever its output channels (its Cout × Cin GEMM on the subgroup kernel), where the forward,
// with 3 output channels, keeps the direct GEMM.
t.test('conv2d weight gradient of a narrow 3×3 conv (8 → 3 channels) through Winograd on lavapipe matches float64', { skip: !e.subgroupMatmul && 'the subgroup GEMM is lavapipe\'s' }, async (t) => {
  const engine = await createEngine({ device: e.device });
  const { err, ran } = await narrowWeightGrad(engine, [4, 8, 10, 12], 3, 21);
  t.ok(err < 1e-5, `max relative error ${err.toExponential(2)}`);
  t.ok(ran.has('winogradWeightGrad'), [...ran].join(' '));
  t.notOk([...ran].some((k) => k.startsWith('winogradOutput')), 'the forward keeps the direct GEMM');
  engine.dispose();
});

// Each chunk's GEMM must run on the subgroup kernel: under a binding limit of the input's 9,216
// bytes, three tile rows (16 · 8 channels · 6 tiles · 4 bytes = 3,072 bytes a row), the 72 tiles of
// a [2, 8, 12, 12] input come in chunks of 18, and the weight gradient keeps the direct kernel;
// unchunked (72 tiles), Winograd.
t.test('conv2d weight gradient of a narrow 3×3 conv takes Winograd only where every tile chunk comes in fours', { skip: !e.subgroupMatmul && 'the subgroup GEMM is lavapipe\'s' }, async (t) => {
  for (const [maxBindingBytes, winograd] of [[undefined, true], [9216, false]] as const) {
    const engine = await createEngine({ device: e.device, maxBindingBytes });
    const { err, ran } = await narrowWeightGrad(engine, [2, 8, 12, 12], 3, 31);
    t.ok(err < 1e-5, `binding limit ${maxBindingBytes}: max relative error ${err.toExponential(2)}`);
    t.equal(ran.has('winogradWeightGrad'), winograd, `binding limit ${maxBindingBytes}: ${[...ran].join(' ')}`);
    engine.dispose();
  }
});

// Winograd's buffers hold 16 values per channel and 2×2 tile; under a binding limit of 5 tile rows
// (16 · 8 channels · 6 tiles · 4 bytes = 3,072 bytes a row) the 72 tiles of a [2, 8, 12, 12] input
// run in chunks of 30, 30 and 12: the forward and input gradient are identical to the unchunked
// run, and every result matches float64.
t.test('conv2d (Winograd) in tile chunks under a lowered binding limit matches the unchunked run and float64', async (t) => {
  const tuning = { conv2dWinograd: { enabled: 1 } };
  const chunked = await createEngine({ device: e.device, tuning, maxBindingBytes: 5 * 3072 });
  const whole = await createEngine({ device: e.device, tuning });
  const x = randomNd([2, 8, 12, 12], 21);
  const w = randomNd([8, 8, 3, 3], 22);
  const dy = randomNd([2, 8, 12, 12], 23);
  const run = async (engine: typeof e) => {
    const xt = upload(engine, x, true);
    const wt = upload(engine, w, true);
    const y = ops.conv2d(xt, wt);
    engine.tape.backward(y, upload(engine, dy));
    return { y: await y.read(), dx: await xt.grad!.read(), dw: await wt.grad!.read() };
  };
  const a = await run(chunked);
  const b = await run(whole);
  t.ok(a.y.every((v, i) => Object.is(v, b.y[i])), 'forward identical to the unchunked run');
  t.ok(a.dx.every((v, i) => Object.is(v, b.dx[i])), 'input gradient identical to the unchunked run');
  t.ok(maxRelError(a.y, conv2dRef(x, w, 1).data) < 1e-5, 'forward matches float64');
  const dwErr = maxRelError(a.dw, weightGradRef(x, dy, 3, 1));
  t.ok(dwErr < 1e-5, `weight gradient summed over chunks matches float64 (${dwErr.toExponential(2)})`);
  chunked.dispose();
  whole.dispose();
});

// An empty batch gives an empty output and a zero weight gradient; an input without channels gives
// the bias everywhere. (The vec4 kernels cannot bind an empty tensor: these take other paths.)
for (const k of [3, 1]) {
  t.test(`conv2d ${k}x${k} of an empty batch and of an input without channels`, async (t) => {
    const w = randomNd([4, 4, k, k], 31);
    const wt = upload(e, w, true);
    const empty = upload(e, randomNd([0, 4, 8, 8], 32), true);
    const y = ops.conv2d(empty, wt);
    t.same(y.shape, [0, 4, 8, 8]);
    e.tape.backward(ops.sum(y));
    t.ok((await wt.grad!.read()).every((v) => v === 0), 'weight gradient over no images is zero');
    const b = randomNd([4], 33);
    const noChannels = ops.conv2d(upload(e, randomNd([1, 0, 8, 8], 34)), upload(e, randomNd([4, 0, k, k], 35)), { bias: upload(e, b) });
    const out = await noChannels.read();
    t.ok(out.every((v, i) => v === Math.fround(b.data[Math.floor(i / 64)])), 'bias everywhere');
    // A tuning that forces Winograd bound its empty transform and failed the engine for good.
    const forced = await createEngine({ device: e.device, tuning: { conv2dWinograd: { enabled: 1 } } });
    const y2 = ops.conv2d(forced.tensor(new Float32Array(0), [1, 0, 8, 8]), forced.tensor(new Float32Array(0), [4, 0, k, k]), { bias: forced.tensor(b.data, [4]) });
    t.ok((await y2.read()).every((v, i) => v === Math.fround(b.data[Math.floor(i / 64)])), 'bias everywhere with Winograd forced');
    await forced.dispose();
  });
}

t.test('conv2d shape errors name the tensors', async (t) => {
  t.throws(() => ops.conv2d(upload(e, randomNd([1, 3, 4, 4], 1)), upload(e, randomNd([2, 4, 3, 3], 1))), /expects 4 input channels, input .* has 3/);
  const x = upload(e, randomNd([1, 2, 4, 4], 1));
  const w = upload(e, randomNd([2, 2, 3, 3], 1));
  t.throws(() => ops.conv2d(x, w, { stride: 0 }), /stride 0 must be a positive integer/);
  t.throws(() => ops.conv2d(x, w, { stride: 1.5 }), /stride 1.5 must be a positive integer/);
  t.throws(() => ops.conv2d(x, w, { pad: 0 }), /only padding \(k−1\)\/2 is supported; got k=3, pad=0/);
  t.throws(() => ops.conv2d(x, w, { stride: 2, residual: upload(e, randomNd([1, 2, 4, 4], 1)) }), /residual \[1, ?2, ?4, ?4\] does not match output \[1, ?2, ?2, ?2\]/);
});

// Output columns (N·Ho·Wo) past 65,535 column blocks fold into z, as a batch of 32 ADM-256
// images' first conv needs (2,097,152 columns, 65,536 blocks of 32 on the subgroup GEMM): a
// single channel keeps these cheap. Every case has an odd number of blocks, the last one partial,
// so the second fold ends in a spare block. The 3×3 conv (row windows, W a multiple of 4) and the
// 5×5 (the general subgroup kernel), forward and input gradient, on the default kernels; the
// register tile through a tuned 8 × 8 tile, forward and, with 58,255 input channels (524,295
// weight columns), the weight gradient.
t.test('conv2d over more than 65535 column blocks folds them into the grid and matches float64', async (t) => {
  // Single-channel correlation with padding (k − 1)/2 in float64; `flip` correlates with the
  // kernel turned 180° (the input gradient of a stride-1 conv).
  const correlate = (x: Nd, w: Nd, flip = false) => {
    const [N, , H, W] = x.shape;
    const k = w.shape[2];
    const pad = (k - 1) / 2;
    const out = new Float64Array(N * H * W);
    for (let n = 0; n < N; n++) for (let i = 0; i < H; i++) for (let j = 0; j < W; j++) {
      let s = 0;
      for (let a = 0; a < k; a++) for (let b = 0; b < k; b++) {
        const y = i + a - pad;
        const xx = j + b - pad;
        if (y < 0 || xx < 0 || y >= H || xx >= W) continue;
        s += w.data[flip ? (k - 1 - a) * k + (k - 1 - b) : a * k + b] * x.data[(n * H + y) * W + xx];
      }
      out[(n * H + i) * W + j] = s;
    }
    return out;
  };
  for (const k of [3, 5]) {
    const x = randomNd([2, 1, 1025, 1028], 61);
    const w = randomNd([1, 1, k, k], 62);
    const dy = randomNd([2, 1, 1025, 1028], 63);
    const xt = upload(e, x, true);
    const y = ops.conv2d(xt, upload(e, w));
    const forward = maxRelError(await y.read(), correlate(x, w));
    t.ok(forward < 1e-5, `${k}×${k} on [2,1,1025,1028] (65,857 blocks of 32 columns), forward: ${forward.toExponential(2)}`);
    e.tape.backward(y, upload(e, dy));
    const inputGrad = maxRelError(await xt.grad!.read(), correlate(dy, w, true));
    t.ok(inputGrad < 1e-5, `${k}×${k}, input gradient: ${inputGrad.toExponential(2)}`);
  }
  const tiled = await createEngine({ device: e.device, tuning: { conv2dWinograd: { enabled: 0 }, conv2d: { wgX: 2, wgY: 2, tm: 4, tn: 4, tk: 4 } } });
  const x = randomNd([1, 1, 513, 1028], 64);
  const w = randomNd([8, 1, 3, 3], 65);
  const forward = maxRelError(await ops.conv2d(upload(tiled, x), upload(tiled, w)).read(), conv2dRef(x, w, 1).data);
  t.ok(forward < 1e-5, `register tile, 8 channels on [1,1,513,1028] (65,921 blocks of 8 columns): ${forward.toExponential(2)}`);
  const wide = randomNd([1, 58255, 1, 1], 66);
  const ww = randomNd([8, 58255, 3, 3], 67);
  const wt = upload(tiled, ww, true);
  const dy = randomNd([1, 8, 1, 1], 68);
  tiled.tape.backward(ops.conv2d(upload(tiled, wide), wt), upload(tiled, dy));
  const weightGrad = maxRelError(await wt.grad!.read(), weightGradRef(wide, dy, 3, 1));
  t.ok(weightGrad < 1e-5, `register tile, weight gradient of 524,295 columns (65,537 blocks): ${weightGrad.toExponential(2)}`);
  tiled.dispose();
});

// The pointwise (1×1) GEMM puts one grid z per image: 70,000 images of 2×2 were refused
// ("1 × 1 × 70000 workgroups, over this device's maxComputeWorkgroupsPerDimension").
t.test('a 1×1 conv over more images than a grid dimension holds matches float64, forward and input gradient', async (t) => {
  const N = e.limits.maxComputeWorkgroupsPerDimension + 5;
  // Image n, channel c, pixel p holds (n % 7) + c + p/4; W = [[1, 0, 0, 1], [0, 2, 0, 0]] (2 × 4).
  const xs = Float32Array.from({ length: N * 16 }, (_, i) => (Math.floor(i / 16) % 7) + Math.floor((i % 16) / 4) + (i % 4) / 4);
  const x = e.tensor(xs, [N, 4, 2, 2], 'x');
  x.requiresGrad = true;
  const w = e.tensor([1, 0, 0, 1, 0, 2, 0, 0], [2, 4, 1, 1], 'w');
  const y = ops.conv2d(x, w);
  const got = await y.read();
  const want = (n: number, o: number, p: number) => {
    const v = (c: number) => (n % 7) + c + p / 4;
    return o === 0 ? v(0) + v(3) : 2 * v(1);
  };
  let worst = 0;
  for (const n of [0, 1, 6, 65534, 65535, N - 1]) for (let o = 0; o < 2; o++) for (let p = 0; p < 4; p++) worst = Math.max(worst, Math.abs(got[(n * 2 + o) * 4 + p] - want(n, o, p)));
  t.equal(worst, 0, 'forward exact (small integers and quarters)');
  e.tape.backward(ops.sum(y));
  const dx = await x.grad!.read();
  // d Σy / dx[n, c, p] = Σ_o W[o, c]: 1, 2, 0, 1 for every image and pixel.
  t.ok([0, N - 1].every((n) => [1, 2, 0, 1].every((g, c) => [0, 1, 2, 3].every((p) => dx[(n * 4 + c) * 4 + p] === g))), 'input gradient');
  for (const z of [x, w, y]) z.dispose();
});

// Split-K keeps each split's sum to about LONG_K steps, but its partial sums are bound whole: a
// 31×31 kernel of 12 channels over 130² pixels (16,900 steps, 2 splits) asked for a 1.1 MB binding
// where the engine allows 0.83 MB, and the backward was refused though one split fits. Expected,
// by hand: with loss Σy every dy is 1, so dw[co, ci, ky, kx] is the sum of x[ci] over the window
// shifted by (ky − 15, kx − 15), the same for every co (float64).
t.test('the weight gradient takes fewer splits where their partial sums would not fit a binding', async (t) => {
  const [C, S, k] = [12, 130, 31];
  const small = await createEngine({ device: e.device, maxBindingBytes: Math.floor(1.5 * C * C * k * k * 4) });
  const x = randomNd([1, C, S, S], 14);
  const w = upload(small, randomNd([C, C, k, k], 15), true);
  small.tape.backward(ops.sum(ops.conv2d(upload(small, x), w)));
  const got = await w.grad!.read();
  const p = (k - 1) / 2;
  const want = new Float64Array(C * C * k * k);
  for (let ci = 0; ci < C; ci++) {
    for (let ky = 0; ky < k; ky++) {
      for (let kx = 0; kx < k; kx++) {
        let s = 0;
        for (let yy = Math.max(0, p - ky); yy < Math.min(S, S + p - ky); yy++) {
          for (let xx = Math.max(0, p - kx); xx < Math.min(S, S + p - kx); xx++) s += x.data[(ci * S + yy + ky - p) * S + xx + kx - p];
        }
        for (let co = 0; co < C; co++) want[((co * C + ci) * k + ky) * k + kx] = s;
      }
    }
  }
  const err = maxRelError(got, want);
  t.ok(err < 1e-5, `max relative error ${err.toExponential(2)}`);
  await small.dispose();
});
