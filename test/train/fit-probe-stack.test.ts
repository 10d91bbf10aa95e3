// Linear probes trained side by side in a LinearProbeStack end where fitHead leaves each one
// trained alone: the same test logits (to rounding) and so the same top-1/top-5, for probes of
// different input widths (the padding must not leak into the narrower ones).
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tap from 'tap';
import { featureKey } from '../../src/train/feature-key.ts';
import { type FeatureArrays, fitHead, trainedHeadLogits } from '../../src/train/fit.ts';
import { fitLinearProbeStack } from '../../src/train/fit-probe-stack.ts';
import { createEngine } from '../../src/engine/engine.ts';
import { maxRelError, randomNd, testEngine } from '../helpers/check.ts';

const t = tap;
const e = await testEngine();
const classes = 4;
const dir = await mkdtemp(join(tmpdir(), 'difrep-probe-stack-'));
t.teardown(() => rm(dir, { recursive: true }));

// Features [count, C, s, s] for (t, b) = (10, b); labels shift some features so there is something to learn.
function split(count: number, seed: number): { labels: number[]; sets: FeatureArrays[] } {
  const labels = Array.from({ length: count }, (_, i) => (i * 7 + seed) % classes);
  const shapes = [[3, 2, 2], [5, 1, 1], [2, 4, 4]];
  const sets = shapes.map((shape, k) => {
    const per = shape[0] * shape[1] * shape[2];
    const data = Float32Array.from(randomNd([count, per], seed * 10 + k).data);
    for (let i = 0; i < count; i++) data[i * per + (labels[i] % per)] += 1.5;
    return { features: new Map([[featureKey(10, k + 1), { data, shape }]]), labels, count };
  });
  return { labels, sets };
}

/** `set` (probe 1's features, t10.b2: 5 values per image) with an Inf at value `k` of image `image`. */
function withInfinity(set: FeatureArrays, image: number, k: number): FeatureArrays {
  const f = set.features.get(featureKey(10, 2))!;
  const data = Float32Array.from(f.data);
  data[image * 5 + k] = Number.POSITIVE_INFINITY;
  return { ...set, features: new Map([[featureKey(10, 2), { ...f, data }]]) };
}

t.test('three probes in one stack match three fitHead runs', async (t) => {
  const train = split(40, 1);
  const test = split(24, 2);
  const recipe = { epochs: 3, batchSize: 8, lr: 1e-2, stepSize: 2, seed: 3 };
  const stacked = await fitLinearProbeStack(e, train.sets, test.sets, { classes, ...recipe, what: 'test stack' });
  t.equal(stacked.length, 3);
  for (let k = 0; k < 3; k++) {
    const state = join(dir, `probe${k}.safetensors`);
    const alone = await fitHead(e, train.sets[k], test.sets[k], { head: 'linear', classes, timesteps: [10], blocks: [k + 1], pool: train.sets[k].features.get(featureKey(10, k + 1))!.shape[1], ...recipe, checkpoint: state });
    const { logits } = await trainedHeadLogits(e, state, test.sets[k]);
    const err = maxRelError(stacked[k].logits, logits);
    t.ok(err < 1e-4, `probe ${k}: logits agree, max relative error ${err.toExponential(2)}`);
    t.equal(stacked[k].top1, alone.top1, `probe ${k}: top-1 ${alone.top1}`);
    t.equal(stacked[k].top5, alone.top5, `probe ${k}: top-5`);
  }
});

t.test('probes over different images are refused', async (t) => {
  const a = split(40, 1);
  const b = split(32, 1);
  await t.rejects(fitLinearProbeStack(e, [a.sets[0], b.sets[1]], [a.sets[0], b.sets[1]], { classes, epochs: 1, batchSize: 8, lr: 1e-2, what: 'mixed stack' }), /mixed stack: every probe's training features must cover the same images/);
});

t.test('a label outside the classes is refused before training, naming its split and image', async (t) => {
  const a = split(16, 1);
  const bad = a.sets.map((s) => ({ ...s, labels: a.labels.map((l, i) => (i === 9 ? classes : l)) }));
  const o = { classes, epochs: 1, batchSize: 8, lr: 1e-2, what: 'stack' };
  await t.rejects(fitLinearProbeStack(e, bad, a.sets, o), /stack: training label of image 9 is 4, not a class in 0\.\.3/);
  await t.rejects(fitLinearProbeStack(e, a.sets, bad, o), /stack: test label of image 9 is 4, not a class in 0\.\.3/);
});

t.test('probes past one storage binding train as several stacks, with the same results', async (t) => {
  // Widths 12, 5, 32 at batch 8 and 4 classes: one stack binds 3·32·8 floats (3072 bytes) in its
  // inputs; a 1600-byte binding holds the first two (2·12·8 floats), then the third alone (1024).
  const train = split(40, 1);
  const test = split(24, 2);
  const recipe = { classes, epochs: 2, batchSize: 8, lr: 1e-2, seed: 3 };
  const whole = await fitLinearProbeStack(e, train.sets, test.sets, { ...recipe, what: 'whole' });
  const small = await createEngine({ device: e.device, maxBindingBytes: 1600, tuning: e.tuning });
  const split3 = await fitLinearProbeStack(small, train.sets, test.sets, { ...recipe, what: 'split' });
  for (let k = 0; k < 3; k++) {
    t.ok(maxRelError(split3[k].logits, whole[k].logits) < 1e-5, `probe ${k}: the same logits`);
    t.equal(split3[k].top1, whole[k].top1, `probe ${k}: the same top-1`);
  }
  const tiny = await createEngine({ device: e.device, maxBindingBytes: 1000, tuning: e.tuning });
  await t.rejects(fitLinearProbeStack(tiny, train.sets, test.sets, { ...recipe, what: 'tiny', names: ['a', 'b', 'features t10.b3'] }),
    /tiny, features t10\.b3: 32 values per image in a batch of 8 \(or its 4 classes' weights\) bind 1024 bytes at once, over this device's largest storage binding \(1000\): give a smaller batch/);
});

// The logits were checked as one stacked [P, n, classes] block: an Inf in probe 1's test features
// said "the logits of images 0..7 holds -Infinity at index 27", an index that named no image.
t.test('a non-finite logit names its probe and test image', async (t) => {
  const train = split(16, 1);
  const test = split(8, 2);
  const broken = withInfinity(test.sets[1], 5, 2);
  await t.rejects(
    fitLinearProbeStack(e, train.sets, [test.sets[0], broken, test.sets[2]], { classes, epochs: 1, batchSize: 8, lr: 1e-2, what: 'test stack', names: ['b1', 'b2', 'b3'] }),
    { name: 'NonFiniteError', message: /test stack, b2: the logits of test image 5 hold (-)?Infinity|test stack, b2: the logits of test image 5 hold NaN/ },
  );
});

// The stack trains on the sum of its probes' losses: a NaN there named the sweep's group and the
// step, not the probe whose features held it.
t.test('a non-finite training loss is led by the probe it left with non-finite weights', async (t) => {
  const train = split(16, 1);
  const broken = withInfinity(train.sets[1], 3, 1);
  await t.rejects(
    fitLinearProbeStack(e, [train.sets[0], broken, train.sets[2]], split(8, 2).sets, { classes, epochs: 1, batchSize: 16, lr: 1e-2, what: 'train stack', names: ['b1', 'b2', 'b3'] }),
    { name: 'NonFiniteError', message: /^b2: the training loss is NaN at train stack: epoch 1, batch 1: / },
  );
});

// A row past the end packed nothing and left the previous batch's row in its slot.
t.test('a probe stack refuses rows its features do not have', async (t) => {
  const { LinearProbeStack } = await import('../../src/model/heads/linear-probe-stack.ts');
  const stack = LinearProbeStack.create(e, [2, 3], classes, 1);
  const features = [new Float32Array(2 * 6), new Float32Array(3 * 6)];
  stack.pack(features, [0, 5]).dispose();
  t.throws(() => stack.pack(features, [1, 6]), /probe stack: row 6 is not one of probe 0's 6 rows/);
  t.throws(() => stack.pack([features[0], new Float32Array(7)], [0]), /probe stack: probe 1's features hold 7 values, not rows of 3/);
  for (const p of stack.params.values()) p.dispose();
});
