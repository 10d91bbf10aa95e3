// Manual measurement: where a pretraining step's GPU time goes, per kernel (timestamp queries),
// on the reference small U-Net of CLARIFICATIONS (issue 7) or a config given as JSON flags.
//   npx tsx scripts/profile-pretrain.ts [batch] [num_channels] [num_res_blocks] [attention_resolutions]
import { createEngine } from '../src/engine/engine.ts';
import { gaussianNoise } from '../src/model/diffusion.ts';
import { UNet } from '../src/model/unet.ts';
import { pretrain } from '../src/train/pretrain.ts';

const batch = Number(process.argv[2] ?? 16);
const channels = Number(process.argv[3] ?? 32);
const resBlocks = Number(process.argv[4] ?? 2);
const attention = process.argv[5] ?? '16,8';
// TUNING='{"conv2dWinograd":{"enabled":0}}' passes a tuning to the engine.
const e = await createEngine({ tuning: JSON.parse(process.env.TUNING ?? "{}") });
const unet = UNet.random(e, {
  image_size: 32, in_channels: 1, num_channels: channels, num_res_blocks: resBlocks, channel_mult: '1,2,2', attention_resolutions: attention,
  num_head_channels: Math.min(32, 2 * channels), learn_sigma: false, use_scale_shift_norm: true, resblock_updown: true,
}, 0);
const data = { count: 64, labels: [], images: async (idx: number[]) => gaussianNoise(idx.length * 32 * 32, idx[0]) };
await pretrain(e, unet, data, { steps: 1, batchSize: batch }); // compiles every kernel
const tPlain = performance.now();
await pretrain(e, unet, data, { steps: 2, batchSize: batch, logEvery: 1 });
console.log(`unprofiled: ${((performance.now() - tPlain) / 2000).toFixed(2)} s per step, ${(2 * batch / ((performance.now() - tPlain) / 1000)).toFixed(2)} images/s`);
e.startProfiling();
const t0 = performance.now();
const r = await pretrain(e, unet, data, { steps: 2, batchSize: batch, logEvery: 1 });
const wall = (performance.now() - t0) / 1000;
const times = await e.stopProfiling();
const gpu = times.reduce((s, k) => s + k.ms, 0);
console.log(`batch ${batch}, ${channels} channels: ${(wall / 2).toFixed(2)} s per step (profiled), ${(2 * batch / wall).toFixed(2)} images/s; GPU ${(gpu / 2000).toFixed(2)} s per step; losses ${r.losses.map((l) => l[1].toFixed(3))}`);
// Per family (kernel key up to its tiling), then the 25 costliest kernels.
const families = new Map<string, number>();
for (const k of times) {
  const family = k.kernel.replace(/\.\d+x\d+\..*$/, '');
  families.set(family, (families.get(family) ?? 0) + k.ms / 2);
}
for (const [family, ms] of [...families].sort((a, b) => b[1] - a[1]).slice(0, 20)) console.log(`${ms.toFixed(1).padStart(9)} ms ${(100 * ms / (gpu / 2)).toFixed(1).padStart(5)}%  ${family}`);
console.log('---');
for (const k of times.slice(0, 25)) console.log(`${(k.ms / 2).toFixed(1).padStart(9)} ms ${String(k.calls / 2).padStart(6)}× ${(100 * k.ms / gpu).toFixed(1).padStart(5)}%  ${k.kernel}`);
e.dispose();
