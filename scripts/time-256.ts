// Manual measurement for the notes: wall time and peak GPU memory of a 256×256 batch-1 forward of
// the real ADM 256 config (random weights) to b=24 and to b=37, after a warm-up run.
import { createEngine } from '../src/engine/engine.ts';
import { UNet } from '../src/model/unet.ts';
import { ADM_256_UNCOND } from '../src/model/unet-config.ts';
import { gaussianNoise } from '../src/model/diffusion.ts';

const e = await createEngine();
const unet = UNet.random(e, ADM_256_UNCOND, 1);
await e.sync();
const weights = e.memoryStats().liveBytes;
const x = e.tensor(gaussianNoise(3 * 256 * 256, 1), [1, 3, 256, 256], 'x');
// Runs as "b[:warm-up]" items, e.g. "24:warm,24,37": a warm-up compiles the pipelines (every
// block uses the same kernel variants, so one warm-up serves all later runs).
for (const item of (process.argv[2] ?? '24:warm,24,37').split(',')) {
  const [bs, tag] = item.split(':');
  const b = Number(bs);
  e.pool.resetPeak();
  const t0 = performance.now();
  const r = unet.forward(x, [150], { taps: [b] });
  await r.taps.get(b)!.read();
  const ms = performance.now() - t0;
  const peak = e.memoryStats().peakBytes;
  console.log(`b=${b} ${tag === 'warm' ? 'warm-up' : 'timed'}: ${(ms / 1000).toFixed(1)} s, peak GPU memory ${(peak / 2 ** 20).toFixed(0)} MiB (weights ${(weights / 2 ** 20).toFixed(0)} MiB, activations ${((peak - weights) / 2 ** 20).toFixed(0)} MiB)`);
  r.taps.get(b)!.dispose();
}
