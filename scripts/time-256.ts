// Manual measurement for the notes: wall time and peak GPU memory of a 256×256 batch-1 forward of
// the real ADM 256 config (random weights) to b=24 and to b=37, one run after a warm-up.
import { createEngine } from '../src/engine/engine.ts';
import { UNet } from '../src/model/unet.ts';
import { ADM_256_UNCOND } from '../src/model/unet-config.ts';
import { gaussianNoise } from '../src/model/diffusion.ts';

const e = await createEngine();
const unet = UNet.random(e, ADM_256_UNCOND, 1);
await e.sync();
const weights = e.memoryStats().liveBytes;
const x = e.tensor(gaussianNoise(3 * 256 * 256, 1), [1, 3, 256, 256], 'x');
for (const b of (process.argv[2] ?? '24,37').split(',').map(Number)) {
  for (const pass of ['warm-up', 'timed']) {
    e.pool.resetPeak();
    const t0 = performance.now();
    const r = unet.forward(x, [150], { taps: [b] });
    await r.taps.get(b)!.read();
    const ms = performance.now() - t0;
    const peak = e.memoryStats().peakBytes;
    console.log(`b=${b} ${pass}: ${(ms / 1000).toFixed(1)} s, peak GPU memory ${(peak / 2 ** 20).toFixed(0)} MiB (weights ${(weights / 2 ** 20).toFixed(0)} MiB, activations ${((peak - weights) / 2 ** 20).toFixed(0)} MiB)`);
    r.taps.get(b)!.dispose();
  }
}
