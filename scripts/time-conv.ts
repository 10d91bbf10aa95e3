// Manual measurement: one conv's forward, input gradient and weight gradient kernels, with the
// default tiling and any others given (TILES='wgX,wgY,tm,tn,tk;…'), results compared.
//   npx tsx scripts/time-conv.ts [N] [Cin] [Cout] [size] [k]
import { conv2dKernel, conv2dWeightGradKernel } from '../kernels/conv2d.wgsl.ts';
import { chooseGemmTiling, gemmWorkgroups } from '../kernels/matmul.wgsl.ts';
import { createEngine } from '../src/engine/engine.ts';
import type { Tensor } from '../src/engine/tensor.ts';

const [N, cin, cout, size, k] = [16, 64, 64, 16, 3].map((d, i) => Number(process.argv[2 + i] ?? d));
const tilings = (process.env.TILES ?? '').split(';').filter(Boolean).map((spec) => {
  const [wgX, wgY, tm, tn, tk] = spec.split(',').map(Number);
  return { wgX, wgY, tm, tn, tk };
});
const e = await createEngine();
const rand = (n: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898) * 0.5);
const x = e.tensor(rand(N * cin * size * size), [N, cin, size, size]);
const w = e.tensor(rand(cout * cin * k * k), [cout, cin, k, k]);
const dy = e.tensor(rand(N * cout * size * size), [N, cout, size, size]);
const pad = (k - 1) / 2;
const flops = 2 * N * cin * cout * k * k * size * size;
const params = (Cin: number, Cout: number) => ({ Cin, H: size, W: size, Cout, N, Ho: size, Wo: size });

async function time(label: string, run: () => void, out: Tensor, reference?: Float32Array): Promise<Float32Array> {
  run();
  await e.sync();
  const reps = 3;
  const t0 = performance.now();
  for (let r = 0; r < reps; r++) run();
  await e.sync();
  const ms = (performance.now() - t0) / reps;
  const values = await out.read();
  let err = 0;
  if (reference) for (let i = 0; i < values.length; i++) err = Math.max(err, Math.abs(values[i] - reference[i]));
  console.log(`${label.padEnd(44)} ${ms.toFixed(1).padStart(8)} ms ${(flops / ms / 1e6).toFixed(1).padStart(6)} GFLOP/s${reference ? `  max diff ${err.toExponential(1)}` : ''}`);
  return values;
}

const fwd = { ksize: k, pad, stride: 1, inputDilation: 1, bias: false, residual: false, transposedWeight: false };
const y = e.empty([N, cout, size, size]);
const t = chooseGemmTiling(cout, N * size * size, e.gemmPresets, undefined, e.limits.maxComputeWorkgroupStorageSize);
const ref = await time(`forward tiled ${t.wgX}x${t.wgY}.${t.tm}x${t.tn}`, () => e.dispatch({ kernel: conv2dKernel(fwd, t), bindings: [w, x, y], params: params(cin, cout), workgroups: gemmWorkgroups(t, cout, N * size * size) }), y);
for (const tt of tilings) {
  await time(`forward tiled ${Object.values(tt)}`, () => e.dispatch({ kernel: conv2dKernel(fwd, tt), bindings: [w, x, y], params: params(cin, cout), workgroups: gemmWorkgroups(tt, cout, N * size * size) }), y, ref);
}
const bwd = { ...fwd, pad: k - 1 - pad, transposedWeight: true };
const dx = e.empty([N, cin, size, size]);
const td = chooseGemmTiling(cin, N * size * size, e.gemmPresets, undefined, e.limits.maxComputeWorkgroupStorageSize);
await time(`input grad tiled ${td.wgX}x${td.wgY}.${td.tm}x${td.tn}`, () => e.dispatch({ kernel: conv2dKernel(bwd, td), bindings: [w, dy, dx], params: params(cout, cin), workgroups: gemmWorkgroups(td, cin, N * size * size) }), dx);
const dw = e.empty([cout, cin, k, k]);
const KW = cin * k * k;
const tw = chooseGemmTiling(cout, KW, e.gemmPresets, undefined, e.limits.maxComputeWorkgroupStorageSize);
await time(`weight grad tiled ${tw.wgX}x${tw.wgY}.${tw.tm}x${tw.tn}`, () => e.dispatch({ kernel: conv2dWeightGradKernel(k, pad, 1, tw), bindings: [dy, x, dw], params: { ...params(cin, cout), qPerSplit: N * size * size }, workgroups: gemmWorkgroups(tw, cout, KW) }), dw);
for (const tt of tilings) {
  await time(`weight grad tiled ${Object.values(tt)}`, () => e.dispatch({ kernel: conv2dWeightGradKernel(k, pad, 1, tt), bindings: [dy, x, dw], params: { ...params(cin, cout), qPerSplit: N * size * size }, workgroups: gemmWorkgroups(tt, cout, KW) }), dw);
}
const splits = Number(process.env.SPLITS ?? 8);
const dwParts = e.empty([splits, cout, cin, k, k]);
const qPerSplit = Math.ceil(N * size * size / splits / tw.tk) * tw.tk;
await time(`weight grad tiled, ${splits} splits (no final sum)`, () => e.dispatch({ kernel: conv2dWeightGradKernel(k, pad, 1, tw), bindings: [dy, x, dwParts], params: { ...params(cin, cout), qPerSplit }, workgroups: gemmWorkgroups(tw, cout, KW, splits) }), dwParts);
e.dispose();
