import { createEngine } from '../src/engine/engine.ts';
import { conv2d } from '../src/engine/ops/conv2d.ts';
import { gaussianNoise } from '../src/model/diffusion.ts';
const tun = process.argv[2] ? JSON.parse(process.argv[2]) : undefined;
const e = await createEngine(tun ? { tuning: { conv2d: tun } } : {});
for (const [N, C, S, K] of [[16, 32, 32, 32], [16, 64, 16, 64], [16, 64, 8, 64]]) {
  const x = e.tensor(gaussianNoise(N * C * S * S, 1), [N, C, S, S]);
  const w = e.tensor(gaussianNoise(K * C * 9, 2), [K, C, 3, 3]);
  conv2d(x, w).dispose(); await e.sync();
  e.startProfiling();
  for (let i = 0; i < 3; i++) conv2d(x, w).dispose();
  const t = await e.stopProfiling();
  const ms = t[0].ms / t[0].calls;
  console.log(N, C, S, K, t[0].kernel, ms.toFixed(1), 'ms', (2 * N * C * K * 9 * S * S / ms / 1e6).toFixed(2), 'GFLOP/s');
}
