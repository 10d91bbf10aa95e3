// Manual measurement: one 3×3 conv through ops.conv2d, Winograd F(2×2, 3×3) against the direct
// GEMM: forward alone, and forward + backward (input and weight gradients), outputs compared.
//   npx tsx scripts/time-winograd.ts [N] [Cin] [Cout] [size]
import { createEngine, type Engine } from '../src/engine/engine.ts';
import { conv2d } from '../src/engine/ops/conv2d.ts';

const [N, cin, cout, size] = [16, 64, 64, 16].map((d, i) => Number(process.argv[2 + i] ?? d));
const flops = 2 * N * cin * cout * 9 * size * size;
const rand = (n: number, s: number) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * 12.9898 + s) * 0.5);

async function measure(e: Engine, label: string): Promise<Float32Array[]> {
  const x = e.tensor(rand(N * cin * size * size, 1), [N, cin, size, size], 'x');
  const w = e.tensor(rand(cout * cin * 9, 2), [cout, cin, 3, 3], 'w');
  x.requiresGrad = true;
  w.requiresGrad = true;
  const dy = e.tensor(rand(N * cout * size * size, 3), [N, cout, size, size]);
  const forward = () => e.noGrad(() => conv2d(x, w).dispose());
  const step = () => {
    x.grad?.dispose();
    w.grad?.dispose();
    x.grad = null;
    w.grad = null;
    const y = conv2d(x, w);
    e.tape.backward(y, dy);
    y.dispose();
  };
  const results: string[] = [];
  for (const [name, run, work] of [['forward', forward, flops], ['forward + backward', step, 3 * flops]] as const) {
    run();
    await e.sync();
    const reps = 3;
    const t0 = performance.now();
    for (let r = 0; r < reps; r++) run();
    await e.sync();
    const ms = (performance.now() - t0) / reps;
    results.push(`${name} ${ms.toFixed(1)} ms (${(work / ms / 1e6).toFixed(1)} direct-GFLOP/s)`);
  }
  console.log(`${label.padEnd(12)} ${results.join(', ')}`);
  e.startProfiling();
  step();
  for (const k of await e.stopProfiling()) console.log(`  ${k.ms.toFixed(2).padStart(8)} ms ${String(k.calls).padStart(3)}×  ${k.kernel}`);
  const y = e.noGrad(() => conv2d(x, w));
  return [await y.read(), await x.grad!.read(), await w.grad!.read()];
}

// TUNING='{"matmul":{…}}' adds to both engines' tuning (e.g. to try GEMM tiles).
const extra = JSON.parse(process.env.TUNING ?? '{}');
const base = await createEngine();
const direct = await measure(await createEngine({ device: base.device, tuning: { ...extra, conv2dWinograd: { enabled: 0 } } }), 'direct');
const winograd = await measure(await createEngine({ device: base.device, tuning: { ...extra, conv2dWinograd: { enabled: 1 } } }), 'Winograd');
const names = ['y', 'dx', 'dw'];
console.log(names.map((n, k) => {
  let err = 0;
  let scale = 0;
  direct[k].forEach((v, i) => { err = Math.max(err, Math.abs(v - winograd[k][i])); scale = Math.max(scale, Math.abs(v)); });
  return `${n} rel diff ${(err / scale).toExponential(1)}`;
}).join(', '));
