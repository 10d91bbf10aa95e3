// Manual measurement for the notes: time per training step of the AttentionHead (d = 1024,
// 2 layers, 8 heads, prePool 16) on a batch of 8 cached b24 features of the 256 model
// ([8, 1024, 16, 16]), and of DifFeed (bottleneck) on the 64×64 reference config (batch 4).
import { createEngine } from '../src/engine/engine.ts';
import { crossEntropy } from '../src/engine/ops/nn.ts';
import { gaussianNoise } from '../src/model/diffusion.ts';
import { AttentionHead } from '../src/model/heads/attention-head.ts';
import { DifFeed } from '../src/model/heads/difeed.ts';
import { UNet } from '../src/model/unet.ts';
import { Adam } from '../src/train/optimizer.ts';
import { trainStep } from '../src/train/train-step.ts';
import { ADM64 } from '../bench/cases.ts';

const e = await createEngine();
const labels = [0, 1, 2, 3, 4, 5, 6, 7];
async function time(name: string, params: Map<string, import('../src/engine/tensor.ts').Tensor>, logits: () => import('../src/engine/tensor.ts').Tensor, n: number, steps = 3) {
  const adam = new Adam(e, params, { lr: 1e-4 });
  await trainStep(e, adam, () => crossEntropy(logits(), labels.slice(0, n)), true); // warm-up (compiles)
  const t0 = performance.now();
  for (let s = 0; s < steps; s++) await trainStep(e, adam, () => crossEntropy(logits(), labels.slice(0, n)), s === steps - 1);
  console.log(`${name}: ${((performance.now() - t0) / steps / 1000).toFixed(2)} s per training step (mean of ${steps} after a warm-up)`);
}

const feat = e.tensor(gaussianNoise(8 * 1024 * 256, 1), [8, 1024, 16, 16]);
const head = AttentionHead.create(e, { blocks: [{ b: 24, channels: 1024, size: 16 }], timesteps: [150], classes: 1000 }, 1);
await time('AttentionHead d=1024, 2 layers, batch 8 of b24 features [8,1024,16,16]', head.params, () => head.forward(new Map([[150, new Map([[24, feat]])]])), 8);

const unet = UNet.random(e, ADM64, 2);
const xt = e.tensor(gaussianNoise(4 * 3 * 64 * 64, 3), [4, 3, 64, 64]);
const difeed = DifFeed.create(e, unet, { classes: 10, head: { dim: 64, heads: 4, prePoolSize: 4 } }, 4);
await time('DifFeed bottleneck on the 64x64 reference config (batch 4, head d=64 as in the dump)', difeed.trainableParameters(), () => difeed.forward(xt, true), 4);
const difeedFull = DifFeed.create(e, unet, { classes: 10 }, 5);
await time('DifFeed bottleneck on the 64x64 reference config (batch 4, paper head d=1024)', difeedFull.trainableParameters(), () => difeedFull.forward(xt, true), 4);
