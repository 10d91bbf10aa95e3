// DifFeed's evaluation with pass 1 read from a feature extraction (same seed, so the same noise)
// gives the logits of the live two-pass evaluation, and a cache extracted with other noise is
// refused instead of silently feeding back features of another x_t.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tap from 'tap';
import { DifFeed, feedbackPlan } from '../../src/model/heads/difeed.ts';
import { UNet } from '../../src/model/unet.ts';
import { loadCachedFeatures } from '../../src/train/cached-features.ts';
import { extractFeatures } from '../../src/train/extract.ts';
import { difeedLogits } from '../../src/train/fit-difeed.ts';
import { maxRelError, testEngine } from '../helpers/check.ts';
import { MINI_UNET, randomImages } from '../helpers/images.ts';

const t = tap;
const e = await testEngine();
const unet = UNet.random(e, MINI_UNET, 11);
const source = randomImages(10);
const difeed = DifFeed.create(e, unet, { classes: 4, head: { dim: 16, heads: 2, layers: 1, prePoolSize: 4 } }, 13);
const dir = await mkdtemp(join(tmpdir(), 'difrep-first-pass-'));
t.teardown(() => rm(dir, { recursive: true }));

async function extracted(seed: number) {
  const out = join(dir, `seed${seed}`);
  await extractFeatures(e, unet, source, { outDir: out, timesteps: [150], blocks: difeed.feedbackBlocks, batchSize: 4, chunkSize: 5, seed, provenance: { test: 'difeed-first-pass' } });
  return loadCachedFeatures(out, [150], difeed.feedbackBlocks);
}

t.test('pass 1 from the extraction: the same logits as two live passes', async (t) => {
  // Batches of 4 over 10 images: the last batch is partial, so the cache's row slicing is exercised.
  const live = await difeedLogits(e, difeed, source, { seed: 5, batchSize: 4 });
  const cached = await difeedLogits(e, difeed, source, { seed: 5, batchSize: 4, firstPass: await extracted(5) });
  t.equal(cached.length, source.count * 4);
  t.ok(maxRelError(cached, live) < 1e-4, `max relative error ${maxRelError(cached, live).toExponential(2)}`);
});

t.test('a cache extracted with another seed (other noise) is refused, and the refused batch keeps nothing', async (t) => {
  const cache = await extracted(6);
  const live = e.memoryStats().liveBytes;
  await t.rejects(difeedLogits(e, difeed, source, { seed: 5, batchSize: 4, firstPass: cache }), /cached first pass differs from the live one at block \d+ .*other noise \(seed\)/);
  // The batch's x_t stayed allocated after the refusal (12,288 bytes here).
  t.equal(e.memoryStats().liveBytes, live, 'live bytes as before the call');
});

t.test('a cache of other images or without a feedback block is refused by name', async (t) => {
  const cache = await extracted(5);
  await t.rejects(difeedLogits(e, difeed, { ...source, count: 8 }, { seed: 5, batchSize: 4, firstPass: cache }), /holds 10 images, the test set 8/);
  const missing = { ...cache, features: new Map([...cache.features].filter(([k]) => k !== `t150.b${difeed.feedbackBlocks[0]}`)) };
  await t.rejects(difeedLogits(e, difeed, source, { seed: 5, batchSize: 4, firstPass: missing }), new RegExp(`no t150\\.b${difeed.feedbackBlocks[0]}; extract t=150`));
});

t.test('feedback that would land after the feature block is refused, not trained on zero gradients', async (t) => {
  // mini: 9 blocks (M = 5); decoder blocks 6..9 feed back into encoder blocks 4..1.
  t.throws(() => feedbackPlan(unet, { classes: 4, strategy: 'all', featureBlock: 2 }), /DifFeed: feedback 6 → 4, 7 → 3 lands outside the encoder blocks that pass 2 runs before the feature block 2 \(1\.\.2\)/);
  t.throws(() => feedbackPlan(unet, { classes: 4, strategy: 'multi-scale', multiScaleTarget: 6 }), /lands outside the encoder blocks/);
  t.same(feedbackPlan(unet, { classes: 4, strategy: 'all' }).targets, [4, 3, 2, 1], 'the default feature block takes every one');
});

// A repeated block fed two layers into one target; multiScaleTarget was ignored without a word
// under any strategy but multi-scale.
t.test('feedback blocks listed twice, or a multi-scale target under another strategy, are refused', async (t) => {
  t.throws(() => feedbackPlan(unet, { classes: 4, feedbackBlocks: [7, 7] }), /DifFeed: feedback block 7 is listed twice \(7, 7\)/);
  t.throws(() => feedbackPlan(unet, { classes: 4, strategy: 'bottleneck', multiScaleTarget: 2 }), /multiScaleTarget is for the multi-scale strategy, not bottleneck/);
});

// A fractional or out-of-range block read a missing block's description: "TypeError: Cannot read
// properties of undefined (reading 'outChannels')".
t.test('a feature block, feedback block or multi-scale target that is no block number is refused by name', async (t) => {
  for (const featureBlock of [40, 6.5, 0]) {
    t.throws(() => feedbackPlan(unet, { classes: 4, featureBlock }), { name: 'RangeError', message: `DifFeed: feature block ${featureBlock} is not a block of this U-Net (1..9)` });
  }
  t.throws(() => feedbackPlan(unet, { classes: 4, feedbackBlocks: [6.5] }), { name: 'RangeError', message: 'DifFeed: block 6.5 is not a decoder block (decoder blocks are 6..9)' });
  t.throws(() => feedbackPlan(unet, { classes: 4, strategy: 'multi-scale', multiScaleTarget: 2.5 }), { name: 'RangeError', message: /DifFeed: multiScaleTarget 2\.5 is not a block number/ });
  // An empty list failed in the U-Net's first forward (no tap asked for); a misspelt strategy as 'feedbackBlocks is not iterable'.
  t.throws(() => feedbackPlan(unet, { classes: 4, feedbackBlocks: [] }), { name: 'RangeError', message: 'DifFeed: feedbackBlocks is empty; give at least one decoder block to feed back (or a strategy)' });
  t.throws(() => feedbackPlan(unet, { classes: 4, strategy: 'bottelneck' as 'bottleneck' }), { name: 'RangeError', message: 'DifFeed: strategy "bottelneck" is none of all, bottleneck, windowed, multi-scale' });
});
