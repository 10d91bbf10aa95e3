// A DifFeed batch more than one chunk of the U-Net holds trains in parts (BatchNorm's statistics
// summed over the parts; each part's feedback layers, pass 2 and head backpropagated on its own, the
// statistics' gradients then through every part's 1×1 convs) and evaluates in batches of a chunk:
// the same run as the whole batch at once, which recorded both passes and the backward of every
// chunk without waiting (past maxCommandsInFlight: refused).
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { createEngine, type Engine, type EngineOptions } from '../../src/engine/engine.ts';
import { UNet } from '../../src/model/unet.ts';
import { planUNet } from '../../src/model/unet-config.ts';
import { imagesPerChunk, largestBindingPerImage } from '../../src/model/unet-bindings.ts';
import type { ImageSource } from '../../src/train/extract.ts';
import { type DifFeedFitOptions, fitDifFeed } from '../../src/train/fit-difeed.ts';
import { testEngine } from '../helpers/check.ts';
import { checkSameRun, labelTurningBad, readTensors } from '../helpers/training-runs.ts';
import { MINI_UNET, randomImages } from '../helpers/images.ts';

const e = await testEngine();
const dir = await mkdtemp(join(tmpdir(), 'difrep-difeed-parts-'));
t.teardown(() => rm(dir, { recursive: true }));
const plan = planUNet(MINI_UNET);
/** One image's largest U-Net tensor with gradients (98,304 bytes): the small engines hold a few. */
const perImage = largestBindingPerImage(e, plan, { last: 9, output: false, gradients: true }).bytesPerImage;

/** An engine whose largest storage binding holds `images` images' U-Net tensors (so a batch runs in parts). */
async function smallEngine(t: Test, images: number, more: EngineOptions = {}): Promise<Engine> {
  const small = await createEngine({ maxBindingBytes: images * perImage, ...more });
  t.teardown(() => small.dispose());
  return small;
}

/** fitDifFeed on a fresh MINI_UNET of seed 11, saving its state as `name`: the result and the saved tensors. */
async function fitAndRead(engine: Engine, source: ImageSource, options: DifFeedFitOptions, name: string) {
  const unet = UNet.random(engine, MINI_UNET, 11);
  const r = await fitDifFeed(engine, unet, source, source, { ...options, checkpoint: join(dir, name) });
  for (const p of unet.parameters().values()) p.dispose();
  return { r, state: await readTensors(join(dir, name)) };
}

t.test('a batch of 6 in parts of 4 and 2 trains and evaluates as the whole batch', async (t) => {
  // One image's largest U-Net tensor with gradients binds 98,304 bytes: the small engine runs 4
  // images a chunk, and holds the feedback layers' largest map ([6, 64, 16, 16]) for the batch. It
  // lets 1,200 commands wait: the parts record at most ~700 between waits, the whole batch's step
  // ~1,450.
  const small = await smallEngine(t, 4, { maxCommandsInFlight: 1200 });
  t.equal(imagesPerChunk(e, plan, { last: 9, output: false, gradients: true }), 1365);
  t.equal(imagesPerChunk(small, plan, { last: 9, output: false, gradients: true }), 4);
  // Epoch 2 keeps BatchNorm's running statistics (evaluation mode in training), epoch 1 trains them.
  const options: DifFeedFitOptions = { classes: 4, head: { dim: 16, heads: 2, layers: 1, prePoolSize: 4 }, epochs: 2, batchSize: 6, evalBatchSize: 6, stepSize: 1, seed: 3, batchNormTrainEpochs: 1 };
  const source = randomImages(12);
  const whole = await fitAndRead(e, source, options, 'whole.safetensors');
  const parts = await fitAndRead(small, source, options, 'parts.safetensors');
  // Weights, BatchNorm running statistics and Adam moments after 4 steps.
  checkSameRun(t, whole, parts);
});

t.test('a step that fails frees the batch and what the step made, whole or in parts', async (t) => {
  const small = await smallEngine(t, 4);
  const source = randomImages(12);
  const options = { classes: 4, head: { dim: 16, heads: 2, layers: 1, prePoolSize: 4 }, epochs: 1, batchSize: 6 };
  for (const engine of [e, small]) {
    const unet = UNet.random(engine, MINI_UNET, 11);
    const live = engine.memoryStats().liveBytes;
    await t.rejects(fitDifFeed(engine, unet, { ...source, labels: Array.from(source.labels, (l, i) => (i === 5 ? 9 : l)) }, source, options), /training label of image 5 is 9, not a class in 0\.\.3/, 'refused before the first step');
    // Label 9 of 4 classes for image 5 once the fit has checked the labels: crossEntropy throws inside the step.
    await t.rejects(fitDifFeed(engine, unet, { ...source, labels: labelTurningBad(source.labels, 5, 9) }, source, options), /label 9 of sample \d is outside 0\.\.3/);
    t.equal(engine.memoryStats().liveBytes, live, `${engine === e ? 'whole' : 'in parts'}: nothing left alive (the noised batch was)`);
    t.equal(engine.tape.length, 0, 'nothing left on the tape');
    for (const p of unet.parameters().values()) p.dispose();
  }
});

t.test('a batch whose head feature is over one binding trains in parts: the head sees a part at a time', async (t) => {
  // Feedback 9 → 5, feature block 7: the feedback maps of 8 images fit 4 images' binding, block 7's
  // feature for the head ([8, 64, 16, 16], 524,288 bytes) does not; it was refused for the whole batch.
  const small = await smallEngine(t, 4);
  const source = randomImages(16);
  const options: DifFeedFitOptions = { classes: 4, head: { dim: 16, heads: 2, layers: 1, prePoolSize: 4 }, feedbackBlocks: [9], featureBlock: 7, epochs: 1, batchSize: 8, seed: 5 };
  const [whole, parts] = [await fitDifFeed(e, UNet.random(e, MINI_UNET, 11), source, source, options), await fitDifFeed(small, UNet.random(small, MINI_UNET, 11), source, source, options)];
  t.ok(Math.abs(parts.losses[0] - whole.losses[0]) <= 1e-5 * whole.losses[0], `loss ${parts.losses[0]} in parts, ${whole.losses[0]} whole`);
  t.same(parts.testHits, whole.testHits);
});

t.test('a batch whose feedback maps do not fit one binding trains in parts: BatchNorm over the parts is the batch\'s', async (t) => {
  // 3 images a chunk; the feedback from block 7 into block 3 is [8, 64, 16, 16] (524,288 bytes) for
  // the batch, over the 294,912-byte binding: it was refused, the feedback layers taking the batch whole.
  const small = await smallEngine(t, 3);
  const options: DifFeedFitOptions = { classes: 4, head: { dim: 16, heads: 2, layers: 1, prePoolSize: 4 }, epochs: 2, batchSize: 8, evalBatchSize: 8, stepSize: 1, seed: 4, batchNormTrainEpochs: 1 };
  const source = randomImages(16);
  const whole = await fitAndRead(e, source, options, 'whole8.safetensors');
  const live = small.memoryStats().liveBytes;
  const parts = await fitAndRead(small, source, options, 'parts8.safetensors'); // 3 + 3 + 2 images a step
  t.equal(small.memoryStats().liveBytes, live, 'nothing left alive');
  checkSameRun(t, whole, parts); // weights, BatchNorm statistics and Adam moments
});
