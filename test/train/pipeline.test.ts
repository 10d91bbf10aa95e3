// CI-sized end-to-end runs of the experiment pipeline on Fashion-MNIST: raw-pixel linear probe,
// feature extraction (sharded, resumable), kNN, CKA.
import { mkdtemp, readdir, rm, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { UNet } from '../../src/model/unet.ts';
import { ckaMatrix } from '../../src/train/eval/cka.ts';
import { knnClassify } from '../../src/train/eval/knn.ts';
import { extractFeatures, featureKey, type ImageSource, openFeatureCache, PIXEL_BLOCK } from '../../src/train/extract.ts';
import { balancedSubset, loadFashionMnist, toModelInput } from '../../src/train/data/fashion-mnist.ts';
import { fitHead, type FeatureArrays } from '../../src/train/fit.ts';
import { testEngine } from '../helpers/check.ts';

const e = await testEngine();
const train = await loadFashionMnist('train');
const test = await loadFashionMnist('test');

function pixels(ds: typeof train, idx: number[]): FeatureArrays {
  const data = new Float32Array(idx.length * 784);
  idx.forEach((i, n) => data.set(toModelInput(ds, [i], 28).subarray(0, 784), n * 784));
  return { features: new Map([[featureKey(0, PIXEL_BLOCK), { data, shape: [1, 28, 28] }]]), labels: idx.map((i) => ds.labels[i]), count: idx.length };
}

t.test('a linear probe on raw pixels of a small Fashion-MNIST split reaches the known ~80%', async (t) => {
  const trainIdx = balancedSubset(train.labels, 300, 1);
  const testIdx = balancedSubset(test.labels, 50, 2);
  const r = await fitHead(e, pixels(train, trainIdx), pixels(test, testIdx), {
    head: 'linear', classes: 10, timesteps: [0], blocks: [PIXEL_BLOCK], pool: 28, epochs: 12, batchSize: 100, lr: 3e-3, stepSize: 8,
  });
  t.ok(r.top1 >= 0.78, `top-1 ${(100 * r.top1).toFixed(1)}% on 500 test images after training on 3,000`);
  t.ok(r.top5 >= 0.97, `top-5 ${(100 * r.top5).toFixed(1)}%`);
  t.ok(r.losses[r.losses.length - 1] < r.losses[0], 'loss decreases');
});

const tiny = {
  image_size: 16, num_channels: 32, num_res_blocks: 1, channel_mult: '1,2', attention_resolutions: '2',
  num_head_channels: 32, learn_sigma: false, use_scale_shift_norm: true, resblock_updown: true,
};

function source(ds: typeof train, idx: number[]): ImageSource {
  return { count: idx.length, labels: idx.map((i) => ds.labels[i]), images: (sel) => toModelInput(ds, sel.map((i) => idx[i]), 16) };
}

t.test('extraction killed midway and resumed (and split over shards) gives the same cache as one run', async (t) => {
  const unet = UNet.random(e, tiny, 3);
  const idx = balancedSubset(train.labels, 4, 3);
  const opts = (outDir: string) => ({ outDir, timesteps: [150], blocks: [9], pool: 2, chunkSize: 16, batchSize: 8, seed: 5, provenance: { config: JSON.stringify(tiny) } });
  const base = await mkdtemp(join(tmpdir(), 'difrep-extract-'));
  const whole = join(base, 'whole');
  const resumed = join(base, 'resumed');
  const { mkdir } = await import('node:fs/promises');
  await mkdir(whole);
  await mkdir(resumed);
  t.equal(await extractFeatures(e, unet, source(train, idx), opts(whole)), 40);
  // "Killed" after its first shard's chunks: shard 0/2 writes chunks 0 and 2, then a full run resumes.
  t.equal(await extractFeatures(e, unet, source(train, idx), { ...opts(resumed), shard: { index: 0, count: 2 } }), 24);
  await t.rejects(openFeatureCache(resumed), /incomplete: 1 of 3 chunks missing/);
  t.equal(await extractFeatures(e, unet, source(train, idx), opts(resumed)), 16, 'only the missing chunk is computed');
  const a = await openFeatureCache(whole);
  const b = await openFeatureCache(resumed);
  const fa = await a.features(150, 9);
  const fb = await b.features(150, 9);
  t.same(fa.shape, [32, 2, 2], 'b9 of this U-Net: 32 channels, pooled to 2×2');
  t.ok(fa.data.every((v, i) => v === fb.data[i]), 'bit-identical features');
  t.same(Array.from(a.labels), idx.map((i) => train.labels[i]));
  t.ok((await readdir(whole)).includes('manifest.json'));
  // Other settings in the same directory are refused rather than mixed.
  await t.rejects(extractFeatures(e, unet, source(train, idx), { ...opts(whole), seed: 6 }), /other settings/);
  await unlink(join(resumed, (await readdir(resumed)).find((f) => f.startsWith('chunk-'))!));
  await t.rejects(openFeatureCache(resumed), /incomplete/);

  const feats = { data: fa.data, n: 40, d: 32 * 4 };
  const knn = await knnClassify(e, feats, Array.from(a.labels), feats, Array.from(a.labels), { ks: [1], classes: 10 });
  t.equal(knn[0].top1, 1, 'kNN on features of the same images is perfect');
  const cka = await ckaMatrix(e, [feats, feats]);
  t.ok(Math.abs(cka[0][1] - 1) < 1e-5, `CKA of a set with itself ${cka[0][1]}`);
  await rm(base, { recursive: true });
});

t.test('head training killed after an epoch and resumed ends exactly like an uninterrupted run', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'difrep-fit-'));
  const trainIdx = balancedSubset(train.labels, 10, 4);
  const testIdx = balancedSubset(test.labels, 5, 5);
  const opts = { head: 'linear' as const, classes: 10, timesteps: [0], blocks: [0], pool: 7, epochs: 3, batchSize: 16, lr: 3e-3 };
  const whole = await fitHead(e, pixels(train, trainIdx), pixels(test, testIdx), { ...opts, checkpoint: join(dir, 'a.safetensors') });
  await fitHead(e, pixels(train, trainIdx), pixels(test, testIdx), { ...opts, epochs: 1, checkpoint: join(dir, 'b.safetensors') });
  const resumed = await fitHead(e, pixels(train, trainIdx), pixels(test, testIdx), { ...opts, checkpoint: join(dir, 'b.safetensors'), resume: true });
  t.same(resumed.losses, whole.losses, 'same per-epoch losses');
  t.equal(resumed.top1, whole.top1);
  await rm(dir, { recursive: true });
});
