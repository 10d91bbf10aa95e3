// Every head can memorise a small random set (the loss goes to ~0), and training resumed from a
// saved state continues bit-identically.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tap, { type Test } from 'tap';
const t = tap;
import { crossEntropy } from '../../src/engine/ops/nn.ts';
import type { Tensor } from '../../src/engine/tensor.ts';
import { AttentionHead } from '../../src/model/heads/attention-head.ts';
import { DifFeed } from '../../src/model/heads/difeed.ts';
import { LinearProbe } from '../../src/model/heads/linear-probe.ts';
import { UNet } from '../../src/model/unet.ts';
import { loadTrainingState, saveTrainingState } from '../../src/train/checkpoint.ts';
import { Adam } from '../../src/train/optimizer.ts';
import { trainStep } from '../../src/train/train-step.ts';
import { randomNd, testEngine, upload } from '../helpers/check.ts';

const e = await testEngine();
const labels = [0, 1, 2, 3, 0, 1, 2, 3];

async function memorise(t: Test, params: Map<string, Tensor>, logits: () => Tensor, steps: number, lr: number) {
  const adam = new Adam(e, params, { lr });
  let first = NaN;
  let last = NaN;
  for (let s = 0; s < steps; s++) {
    const l = await trainStep(e, adam, () => crossEntropy(logits(), labels), s === 0 || s === steps - 1);
    if (s === 0) first = l!;
    if (s === steps - 1) last = l!;
  }
  t.ok(last < 0.05, `loss ${first.toFixed(3)} → ${last.toFixed(4)} after ${steps} steps`);
}

t.test('LinearProbe memorises 8 random features', async (t) => {
  const f = upload(e, randomNd([8, 6, 4, 4], 1));
  const probe = LinearProbe.create(e, { channels: 6, classes: 4, pool: 2 }, 1);
  await memorise(t, probe.params, () => probe.forward(f), 60, 5e-2);
});

t.test('AttentionHead memorises 8 random features', async (t) => {
  const f = upload(e, randomNd([8, 6, 5, 5], 2));
  const head = AttentionHead.create(e, { blocks: [{ b: 24, channels: 6, size: 5 }], timesteps: [150], classes: 4, dim: 16, heads: 2, layers: 1, prePoolSize: 4 }, 2);
  await memorise(t, head.params, () => head.forward(new Map([[150, new Map([[24, f]])]])), 60, 1e-2);
});

t.test('DifFormer (2 blocks × 2 timesteps) memorises 8 random features', async (t) => {
  const fs = new Map([90, 150].map((tt, i) => [tt, new Map([[19, upload(e, randomNd([8, 4, 2, 2], 10 + i))], [24, upload(e, randomNd([8, 6, 4, 4], 20 + i))]])]));
  const head = AttentionHead.create(e, { blocks: [{ b: 19, channels: 4, size: 2 }, { b: 24, channels: 6, size: 4 }], timesteps: [90, 150], classes: 4, dim: 16, heads: 2, layers: 1, prePoolSize: 4 }, 3);
  await memorise(t, head.params, () => head.forward(fs), 60, 1e-2);
});

const mini = {
  image_size: 16, num_channels: 32, num_res_blocks: 1, channel_mult: '1,2', attention_resolutions: '2',
  num_head_channels: 32, learn_sigma: false, use_scale_shift_norm: true, resblock_updown: true,
};

t.test('DifFeed (bottleneck, frozen random U-Net) memorises 8 images through the feedback path', async (t) => {
  const unet = UNet.random(e, mini, 4);
  const xt = upload(e, randomNd([8, 3, 16, 16], 5));
  const difeed = DifFeed.create(e, unet, { classes: 4, head: { dim: 16, heads: 2, layers: 1, prePoolSize: 4 } }, 6);
  t.same(difeed.feedbackBlocks, [7, 9], 'bottleneck mapped by role onto the 9-block U-Net');
  await memorise(t, difeed.trainableParameters(), () => difeed.forward(xt, true), 25, 1e-2);
  for (const p of unet.parameters().values()) t.equal(p.grad, null, `U-Net stays frozen: ${p.label}`);
});

t.test('training resumed from a saved state continues bit-identically', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'difrep-resume-'));
  const f = upload(e, randomNd([8, 6, 5, 5], 7));
  const make = () => AttentionHead.create(e, { blocks: [{ b: 24, channels: 6, size: 5 }], timesteps: [150], classes: 4, dim: 16, heads: 2, layers: 1, prePoolSize: 4 }, 8);
  const run = async (head: AttentionHead, adam: Adam, steps: number) => {
    for (let s = 0; s < steps; s++) await trainStep(e, adam, () => crossEntropy(head.forward(new Map([[150, new Map([[24, f]])]])), labels));
  };
  const a = make();
  const adamA = new Adam(e, a.params, { lr: 1e-2 });
  await run(a, adamA, 3);
  await saveTrainingState(join(dir, 'state.safetensors'), a.params, adamA, { epoch: 0, steps: 3 }, {});
  await run(a, adamA, 2);

  const b = make();
  const adamB = new Adam(e, b.params, { lr: 1e-2 });
  const progress = await loadTrainingState(e, join(dir, 'state.safetensors'), b.params, adamB);
  t.equal(progress.steps, 3);
  await run(b, adamB, 2);
  let differing = 0;
  for (const [k, p] of a.params) {
    const x = await p.read();
    const y = await b.params.get(k)!.read();
    for (let i = 0; i < x.length; i++) if (x[i] !== y[i]) differing++;
  }
  t.equal(differing, 0, 'every parameter bit-identical after 3 + 2 steps vs 3, save, load, 2');
  await rm(dir, { recursive: true });
});
