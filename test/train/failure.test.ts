// Training never turns a NaN into a score and never mixes two runs in one state: a non-finite loss,
// weight or logit stops with an error naming where; resuming checks every setting.
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { createEngine } from '../../src/engine/engine.ts';
import { type NamedArray, openSafetensors, writeSafetensors } from '../../src/model/checkpoint/safetensors.ts';
import { countTopK } from '../../src/train/eval/classification.ts';
import { readStateProgress } from '../../src/train/checkpoint.ts';
import { type FeatureArrays, fitHead, type FitOptions } from '../../src/train/fit.ts';
import { assertFinite, assertFiniteJson, NonFiniteError } from '../../src/train/finite.ts';
import { randomNd, testEngine } from '../helpers/check.ts';
import { checkSameRun, checkSameState, labelTurningBad, readTensors, stopAfterBatch } from '../helpers/training-runs.ts';

const e = await testEngine();

t.test('top-k never scores a row holding NaN or Inf: it is refused, naming the row', async (t) => {
  // Two images, three classes. Row 0 is all NaN with label 0 (argmax over NaN would say 0); row 1 ranks its label 2 first.
  const logits = Float32Array.from([NaN, NaN, NaN, 0, 1, 5]);
  t.throws(() => countTopK(logits, [0, 2]), { name: 'NonFiniteError', message: /row 0 hold NaN/ });
  t.throws(() => countTopK(Float32Array.from([0, 1, 5, Infinity, 0, 0]), [2, 0]), { name: 'NonFiniteError', message: /row 1 hold Infinity/ });
  // Ties rank the earlier class first (a stable descending sort): label 1 ties class 0 → rank 1.
  t.has(countTopK(Float32Array.from([2, 2, 1]), [1]), { top1: 0, top5: 1 });
});

// JSON.stringify writes NaN and Inf as null: results.json would have said null where a score was.
t.test('assertFiniteJson names the path of a NaN or Inf in a results object', async (t) => {
  t.doesNotThrow(() => assertFiniteJson({ rows: [{ top1: 0.5, method: 'x' }], n: 3, on: true, none: null }, 'results'));
  t.throws(() => assertFiniteJson({ rows: [{ top1: 0.5 }, { top1: NaN }] }, 'results'), { name: 'NonFiniteError', message: 'results.rows[1].top1 is NaN' });
  t.throws(() => assertFiniteJson({ sweep: [[0.1, -Infinity]] }, 'r'), { message: 'r.sweep[0][1] is -Infinity' });
});

t.test('assertFinite names what and where', async (t) => {
  t.doesNotThrow(() => assertFinite([0, 1, -2], 'x'));
  t.throws(() => assertFinite(Float32Array.from([0, 1, NaN]), 'features t=150, b=9'), { name: 'NonFiniteError', message: 'features t=150, b=9 holds NaN at index 2' });
});

function features(n: number, seed: number, scale = 1): FeatureArrays {
  const data = randomNd([n, 4, 2, 2], seed).data.map((v) => v * scale);
  return { features: new Map([['t150.b9', { data: Float32Array.from(data), shape: [4, 2, 2] }]]), labels: Array.from({ length: n }, (_, i) => i % 4), count: n };
}

/** Rewrites the training state at `path` with `seconds` as the time its run took so far. */
async function setRecordedSeconds(path: string, seconds: number): Promise<void> {
  const src = await openSafetensors(path);
  const tensors: Record<string, NamedArray> = {};
  for (const k of src.keys()) tensors[k] = { shape: src.info(k)!.shape, data: await src.read(k) };
  const metadata = { ...src.metadata, progress: JSON.stringify({ ...JSON.parse(src.metadata.progress), seconds }) };
  await src.close();
  await writeSafetensors(path, tensors, metadata);
}

const linear = (o: Partial<FitOptions> = {}): FitOptions => ({ head: 'linear', classes: 4, timesteps: [150], blocks: [9], pool: 1, epochs: 1, batchSize: 4, ...o });

t.test('a loss that overflows stops training naming the step, and no state is written', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'difrep-nan-'));
  const checkpoint = join(dir, 'state.safetensors');
  // Features of 1e30 under lr 1e30: the second step's logits overflow float32.
  const err = await fitHead(e, features(8, 1, 1e30), features(4, 2), linear({ lr: 1e30, checkpoint })).then(() => null, (x: Error) => x);
  t.type(err, NonFiniteError);
  t.match(err?.message, /the training loss is (NaN|Infinity) at epoch 1, batch \d \(step \d\)/);
  t.rejects(stat(checkpoint), 'no state holding NaN was saved');
  await rm(dir, { recursive: true });
});

// The evaluation's logits were checked batch by batch as one block: "the logits of images 0..7
// holds NaN at index 30", which read as image 30; it was image 3 of [8, 4].
t.test('a non-finite test logit names its image and class', async (t) => {
  const test = features(8, 2);
  const data = test.features.get('t150.b9')!.data;
  data[5 * 16 + 3] = Number.POSITIVE_INFINITY; // image 5 (16 values per image)
  await t.rejects(fitHead(e, features(8, 1), test, linear({ batchSize: 8 })), { name: 'NonFiniteError', message: /^evaluation: the logits of image 5 hold (-?Infinity|NaN) \(class [0-3]\)$/ });
});

t.test('resuming checks settings, epochs and refuses to replace a state', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'difrep-resume-'));
  const checkpoint = join(dir, 'state.safetensors');
  const train = features(8, 3);
  const test = features(4, 4);
  const data = { features: 'unet', train: '/data/train' };
  const first = await fitHead(e, train, test, linear({ epochs: 2, lr: 1e-3, checkpoint, data }));
  t.equal(first.losses.length, 2);
  // A refused fit frees its head and optimizer (they stayed alive, and retries piled them up).
  const live = e.memoryStats().liveBytes;
  await t.rejects(fitHead(e, train, test, linear({ epochs: 2, lr: 1e-3, checkpoint, data })), /already holds a training state .*pass --resume/);
  t.equal(e.memoryStats().liveBytes, live, 'nothing left alive by the refused fit');
  await t.rejects(fitHead(e, train, test, linear({ epochs: 4, lr: 1e-2, checkpoint, resume: true, data })), /cannot resume .*lr 0\.001 there, 0\.01 now/);
  await t.rejects(fitHead(e, train, test, linear({ epochs: 4, lr: 1e-3, optimizer: 'sgd', checkpoint, resume: true, data })), /optimizer "adam" there, "sgd" now/);
  await t.rejects(fitHead(e, train, test, linear({ epochs: 4, lr: 1e-3, batchSize: 2, seed: 5, checkpoint, resume: true, data })), /batchSize 4 there, 2 now; seed 0 there, 5 now/);
  await t.rejects(fitHead(e, train, test, linear({ epochs: 1, lr: 1e-3, checkpoint, resume: true, data })), /already trained 2 epochs; --epochs 1 is fewer/);
  await t.rejects(fitHead(e, train, test, linear({ epochs: 3, lr: 1e-3, checkpoint, resume: true, data: { features: 'unet', train: '/data/other' } })), /other settings \(data\.train "\/data\/train" there, "\/data\/other" now\)/, 'a nested setting names its own path');
  // The earlier run's time as the state records it, set to 1000 s: a resumed run reports that plus its own
  // (comparing with the first run's wall time instead is flaky: it also counts the evaluation after the save).
  await setRecordedSeconds(checkpoint, 1000);
  // The same settings written in another key order (a config's JSON, an object built otherwise) are the same settings.
  const more = await fitHead(e, train, test, linear({ epochs: 3, lr: 1e-3, checkpoint, resume: true, data: { train: '/data/train', features: 'unet' } }));
  t.equal(more.losses.length, 3, 'the same settings resume, with more epochs');
  t.same(more.losses.slice(0, 2), first.losses, 'the earlier losses are kept');
  t.ok(more.seconds > 1000 && more.seconds < 1600, `the run's time counts the earlier run's 1000 s (${more.seconds} s)`);
  await rm(dir, { recursive: true });
});

// A bad label was named by its place in a shuffled batch (or a part of one), and only once a step drew it.
t.test('a label outside the classes is refused before training, naming its split and image', async (t) => {
  const labels = (at: number, value: number) => Array.from({ length: 12 }, (_, i) => (i === at ? value : i % 4));
  const o = linear({ batchSize: 2 });
  await t.rejects(fitHead(e, { ...features(12, 3), labels: labels(11, 9) }, features(4, 4), o), /training label of image 11 is 9, not a class in 0\.\.3/);
  await t.rejects(fitHead(e, features(12, 3), { ...features(12, 4), labels: labels(7, 1.5) }, o), /test label of image 7 is 1\.5, not a class in 0\.\.3/);
});

t.test('a fit that fails in a later step leaves nothing on the GPU (the earlier steps\' unread losses and logits were kept)', async (t) => {
  // Label 9 of 4 classes for image 11 once the fit has checked the labels: crossEntropy throws in the step that draws it.
  for (const o of [linear({ batchSize: 2 }), linear({ head: 'attention', attention: { dim: 8, heads: 2, layers: 1 }, batchSize: 2 })]) {
    const bad = { ...features(12, 3), labels: labelTurningBad(features(12, 3).labels, 11, 9) };
    const live = e.memoryStats().liveBytes;
    await t.rejects(fitHead(e, bad, features(4, 4), o), /label 9 of sample \d is outside 0\.\.3/);
    t.equal(e.memoryStats().liveBytes, live, `${o.head}: nothing left alive`);
  }
});

// The optimizer and schedule refuse bad hyper-parameters; made after the head, they left it allocated.
t.test('a fit refused for its hyper-parameters frees the head it made', async (t) => {
  const live = e.memoryStats().liveBytes;
  await t.rejects(fitHead(e, features(8, 3), features(4, 4), linear({ lr: -1 })), { message: 'Adam: lr must be ≥ 0, got -1' });
  await t.rejects(fitHead(e, features(8, 3), features(4, 4), linear({ lr: 1e-3, stepSize: 0 })), { message: 'StepLR: stepSize must be an integer ≥ 1, got 0' });
  t.equal(e.memoryStats().liveBytes, live);
});

t.test('a head trained and evaluated leaves nothing on the GPU (its optimizer\'s moments and evaluation logits were kept)', async (t) => {
  const live = e.memoryStats().liveBytes;
  await fitHead(e, features(8, 3), features(4, 4), linear({ epochs: 2, lr: 1e-3 }));
  t.equal(e.memoryStats().liveBytes, live);
});

// The paper's head (d 1024, 8 heads, 257 tokens) binds 539 MB at batch 128 (its MLP's hidden layer):
// refused on a 128 MiB binding, where the released code's 128 are 4 GPUs × 32, gradients averaged.
t.test('an attention head whose batch cannot fit a storage binding trains in parts: the same run as the whole batch', async (t) => {
  // 257 tokens (16×16 + CLS) and 8 heads: 8 · 257² · 4 B = 2.1 MB of attention weights an image.
  const n = 8;
  const perImage = 4 * 257 * 8 * 257;
  const big = { features: new Map([['t150.b9', { data: Float32Array.from(randomNd([n, 4, 16, 16], 21).data), shape: [4, 16, 16] }]]), labels: Array.from({ length: n }, (_, i) => i % 4), count: n };
  const small = await createEngine({ device: e.device, maxBindingBytes: 3 * perImage });
  t.teardown(() => small.dispose());
  const dir = await mkdtemp(join(tmpdir(), 'difrep-attention-parts-'));
  t.teardown(() => rm(dir, { recursive: true }));
  const options = (name: string): FitOptions => ({ head: 'attention', classes: 4, timesteps: [150], blocks: [9], attention: { dim: 16, heads: 8, layers: 1, prePoolSize: 16 }, epochs: 2, batchSize: n, lr: 1e-3, checkpoint: join(dir, name) });
  const run = async (engine: typeof e, name: string) => {
    return { r: await fitHead(engine, big, big, options(name)), state: await readTensors(join(dir, name)) };
  };
  const whole = await run(e, 'whole.safetensors');
  const parts = await run(small, 'parts.safetensors'); // 3 + 3 + 2 images a step
  checkSameRun(t, whole, parts); // weights and Adam moments after 2 steps
  // One image over the binding cannot be split further.
  const tiny = await createEngine({ device: e.device, maxBindingBytes: perImage - 4 });
  t.teardown(() => tiny.dispose());
  await t.rejects(fitHead(tiny, big, big, options('x.safetensors')), new RegExp(`attention head: one image binds ${perImage} bytes .*: give a smaller --dim or --pre-pool`));
});

// The linear probe never split a batch: 128 maps of [512, 32, 32] (the CLI's default --batch at
// --pool 32) need 256 MiB, twice lavapipe's binding, and the first dispatch was refused.
t.test('a linear probe whose batch cannot fit a storage binding trains and scores in parts: the same run as the whole batch', async (t) => {
  const n = 12;
  const perImage = 4 * 4 * 8 * 8; // [4, 8, 8] features at pool 8; the weight [4 classes, 256] binds 4 images' worth
  const maps = { features: new Map([['t150.b9', { data: Float32Array.from(randomNd([n, 4, 8, 8], 22).data), shape: [4, 8, 8] }]]), labels: Array.from({ length: n }, (_, i) => i % 4), count: n };
  const small = await createEngine({ device: e.device, maxBindingBytes: 5 * perImage });
  t.teardown(() => small.dispose());
  const dir = await mkdtemp(join(tmpdir(), 'difrep-linear-parts-'));
  t.teardown(() => rm(dir, { recursive: true }));
  const options = (name: string) => linear({ pool: 8, epochs: 2, batchSize: n, lr: 1e-2, checkpoint: join(dir, name) });
  const run = async (engine: typeof e, name: string) => ({ r: await fitHead(engine, maps, maps, options(name)), state: await readTensors(join(dir, name)) });
  const whole = await run(e, 'whole.safetensors');
  const parts = await run(small, 'parts.safetensors'); // 5 + 5 + 2 images a step
  checkSameRun(t, whole, parts);
  // A weight over the binding cannot be split: refused up front, naming the fix.
  const tiny = await createEngine({ device: e.device, maxBindingBytes: 4 * perImage - 4 });
  t.teardown(() => tiny.dispose());
  await t.rejects(fitHead(tiny, maps, maps, options('x.safetensors')), { name: 'RangeError', message: `linear probe: its weight [4, 256] binds ${4 * perImage} bytes, over this device's largest storage binding (${4 * perImage - 4}): give a smaller --pool` });
});

// Parts were sized by the attention weights, MLP and qkv alone: with many channels and few tokens
// the tokenizer's input ([n, 64, 4, 4]) is the largest tensor, and a part over the binding failed.
t.test('an attention head\'s parts are sized by its input too, when that is its largest tensor', async (t) => {
  const n = 6;
  const wide = { features: new Map([['t150.b9', { data: Float32Array.from(randomNd([n, 64, 4, 4], 22).data), shape: [64, 4, 4] }]]), labels: Array.from({ length: n }, (_, i) => i % 4), count: n };
  // 4 · 64 · 16 = 4,096 bytes of input an image; the attention's 17 tokens bind at most 4 · 17 · 32 = 2,176.
  const small = await createEngine({ device: e.device, maxBindingBytes: 2 * 4096 + 100 });
  t.teardown(() => small.dispose());
  const o: FitOptions = { head: 'attention', classes: 4, timesteps: [150], blocks: [9], attention: { dim: 8, heads: 1, layers: 1, prePoolSize: 4 }, epochs: 1, batchSize: n, lr: 1e-3 };
  const [whole, parts] = [await fitHead(e, wide, wide, o), await fitHead(small, wide, wide, o)];
  t.ok(Math.abs(parts.losses[0] - whole.losses[0]) <= 1e-5 * whole.losses[0], `loss ${parts.losses[0]} in parts of 2, ${whole.losses[0]} whole`);
});

t.test('an attention head too large to train is refused before anything is allocated', async (t) => {
  const live = e.memoryStats().liveBytes;
  const attention = (dim: number, layers: number): FitOptions => linear({ head: 'attention', attention: { dim, layers, heads: 8 } });
  // 64 layers of d 16384: 12·d² each, 2.06·10¹¹ parameters (16 bytes each to train: 3.3 TB).
  await t.rejects(fitHead(e, features(8, 1), features(4, 2), attention(16384, 64)), /attention head: 206,\d{3},\d{3},\d{3} parameters \(3\d{3}\.\d GB to train.*over the 500,000,000 allowed: give a smaller --dim or fewer --layers/);
  // d 4096, one layer (2·10⁸ parameters): its MLP weight [16384, 4096] is 268,435,456 bytes, over a 128 MiB binding.
  const small = await createEngine({ device: e.device, maxBindingBytes: 128 << 20 });
  await t.rejects(fitHead(small, features(8, 1), features(4, 2), attention(4096, 1)), /attention head: its weight intra_inter_block_attention\.layers\.1\.mlp\.fc1\.weight \[16384, 4096\] takes 268435456 bytes, over this device's largest storage binding \(134217728\): give a smaller --dim/);
  small.dispose();
  t.equal(e.memoryStats().liveBytes, live, 'nothing allocated');
});

// The heads saved only at the end of each epoch: a stop lost up to an epoch (10,009 steps at the
// paper's scale). Expected: the run never stopped, tensor for tensor and loss for loss.
t.test('a head stopped within an epoch resumes at the next batch, to the state of a run never stopped', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'difrep-head-resume-'));
  const [train, test] = [features(12, 7), features(4, 8)];
  const o = (checkpoint: string, more: Partial<FitOptions> = {}) => linear({ epochs: 2, lr: 0.3, stepSize: 1, checkpoint, ...more });
  let wholeAccuracy = -1;
  const whole = await fitHead(e, train, test, o(join(dir, 'whole.safetensors'), { onEpoch: (i) => void (wholeAccuracy = i.trainAccuracy) }));
  const stopped = join(dir, 'stopped.safetensors');
  await t.rejects(fitHead(e, train, test, o(stopped, stopAfterBatch(1, 2))), /stopped/);
  const saved = await openSafetensors(stopped);
  t.match(JSON.parse(saved.metadata.progress), { epoch: 1, batch: 1 }, 'saved after batch 1 of epoch 2');
  await saved.close();
  // What eval reports of it: one epoch and a batch (it said "1 epochs" alone).
  t.same(await readStateProgress(stopped), { epochs: 1, batches: 1, steps: 4 });
  let batchesRun = 0;
  let trainAccuracy = -1;
  const resumed = await fitHead(e, train, test, o(stopped, { resume: true, onBatch: () => void batchesRun++, onEpoch: (i) => void (trainAccuracy = i.trainAccuracy) }));
  t.equal(batchesRun, 2, 'only batches 2 and 3 of epoch 2 run again');
  t.same(resumed.losses, whole.losses, 'the same epoch losses');
  t.equal(trainAccuracy, wholeAccuracy, 'epoch 2\'s training accuracy counts the batch trained before the stop');
  await checkSameState(t, join(dir, 'whole.safetensors'), stopped);
  t.equal(resumed.top1, whole.top1);
  await rm(dir, { recursive: true });
});
