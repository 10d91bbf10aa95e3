// DifFeed's optimizers: Adam by default (the paper), plain SGD with --optimizer sgd (the released
// scripts: torch.optim.SGD over both parameter groups at one lr, 1e-2; diffssl finetune.py:39-41).
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { crossEntropy } from '../../src/engine/ops/nn.ts';
import { gaussianNoise, linearSchedule, qSample } from '../../src/model/diffusion.ts';
import { DifFeed } from '../../src/model/heads/difeed.ts';
import { UNet } from '../../src/model/unet.ts';
import { epochBatches } from '../../src/train/epoch-batches.ts';
import { type DifFeedFitOptions, fitDifFeed, trainingNoiseBase } from '../../src/train/fit-difeed.ts';
import { noiseSeed } from '../../src/train/noise-seed.ts';
import { testEngine } from '../helpers/check.ts';
import { MINI_UNET, randomImages } from '../helpers/images.ts';
import { readTensors } from '../helpers/training-runs.ts';

const e = await testEngine();
const unet = UNet.random(e, MINI_UNET, 11);
const source = randomImages(4);
const dir = await mkdtemp(join(tmpdir(), 'difrep-difeed-optimizer-'));
t.teardown(() => rm(dir, { recursive: true }));

t.test('optimizer sgd: one step moves the feedback layers and the head by −1e-2 × their gradient', async (t) => {
  const checkpoint = join(dir, 'sgd.safetensors');
  const o: DifFeedFitOptions = { classes: 4, head: { dim: 16, heads: 2, layers: 1, prePoolSize: 4 }, batchSize: 4, epochs: 1, seed: 5, flip: false, optimizer: 'sgd', checkpoint };
  const r = await fitDifFeed(e, unet, source, source, o);
  t.equal(r.optimizer, 'sgd');
  t.equal(r.lr, 1e-2);
  t.equal(r.settings.feedbackLr, 1e-2, 'both groups at 1e-2');
  const state = await readTensors(checkpoint);

  // The same step by hand: the fit's initial weights (its seed), its one batch (all 4 images in the
  // epoch's order, noise per image), one backward.
  const difeed = DifFeed.create(e, unet, o, 5);
  const [idx] = epochBatches(4, 4, 5 * 1000, 'DifFeed');
  const S = MINI_UNET.image_size;
  const per = 3 * S * S;
  const noise = new Float32Array(4 * per);
  idx.forEach((img, i) => noise.set(gaussianNoise(per, noiseSeed(trainingNoiseBase(5, 0), img, difeed.t)), i * per));
  const xt = qSample(e, linearSchedule(1000), e.tensor(await source.images(idx), [4, 3, S, S]), idx.map(() => difeed.t), e.tensor(noise, [4, 3, S, S]));
  const params = new Map([...difeed.trainableParameters()].map(([k, p]) => [k, p] as const));
  for (const p of params.values()) p.requiresGrad = true;
  e.tape.backward(crossEntropy(difeed.forward(xt, true), idx.map((i) => source.labels[i])));
  // Off by at most 1e-3 of the largest step, or the rounding of p − lr·g to f32 (a step of 1e-5
  // on a BatchNorm weight of 1 is a few ulps).
  let worst = { err: 0, key: '' };
  for (const [k, p] of params) {
    const [p0, g] = [await p.read(), await p.grad!.read()];
    const saved = state.get(`param.${k}`)!;
    t.ok(saved, `${k} saved`);
    const moved = Math.max(...g.map((v) => Math.abs(v))) * 1e-2;
    for (let i = 0; i < p0.length; i++) {
      const err = Math.abs(saved[i] - (p0[i] - 1e-2 * g[i])) / (1e-3 * moved + 2 ** -22 * Math.abs(p0[i]) + 1e-30);
      if (err > worst.err) worst = { err, key: k };
    }
  }
  t.ok(worst.err <= 1, `worst error ${worst.err.toFixed(2)} of its tolerance (${worst.key})`);
  e.tape.clear();
});

// A U-Net an optimizer was made over (pretrained in this process) has requiresGrad set: each step
// computed its weights' gradients and kept them on the parameters. Frozen means none, and no change.
t.test('a U-Net whose parameters require gradients is still frozen: no gradient kept, no weight moved, its flags restored', async (t) => {
  const net = UNet.random(e, MINI_UNET, 12);
  const params = [...net.parameters().values()];
  for (const p of params) p.requiresGrad = true;
  const before = await Promise.all(params.map((p) => p.read()));
  const live = e.memoryStats().liveBytes;
  await fitDifFeed(e, net, source, source, { classes: 4, head: { dim: 16, heads: 2, layers: 1, prePoolSize: 4 }, batchSize: 4, epochs: 1, seed: 5, flip: false });
  t.equal(params.filter((p) => p.grad).length, 0, 'no U-Net parameter holds a gradient');
  t.equal(e.memoryStats().liveBytes, live, 'nothing left allocated');
  t.ok(params.every((p) => p.requiresGrad), 'requiresGrad as it was');
  const after = await Promise.all(params.map((p) => p.read()));
  t.ok(after.every((a, i) => a.every((v, j) => Object.is(v, before[i][j]))), 'every weight bit-unchanged');
  for (const p of params) p.dispose();
});

t.test('a DifFeed fit refused for its hyper-parameters frees its layers and head', async (t) => {
  const live = e.memoryStats().liveBytes;
  await t.rejects(fitDifFeed(e, unet, source, source, { classes: 4, head: { dim: 16, heads: 2, layers: 1, prePoolSize: 4 }, batchSize: 4, epochs: 1, stepSize: 0 }), { message: 'StepLR: stepSize must be an integer ≥ 1, got 0' });
  t.equal(e.memoryStats().liveBytes, live);
});
