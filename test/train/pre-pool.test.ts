// fitHead pools cached features once on the CPU (the heads' first op is a parameter-free adaptive
// pool); a head rebuilt from its saved state and given the full-size features pools them on the GPU
// inside the head instead. Both must score the same.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { countTopK } from '../../src/train/eval/classification.ts';
import { type FeatureArrays, fitHead, type FitOptions, trainedHeadLogits } from '../../src/train/fit.ts';
import { randomNd, testEngine } from '../helpers/check.ts';

const e = await testEngine();

function features(n: number, seed: number): FeatureArrays {
  const f = randomNd([n, 3, 8, 8], seed);
  return { features: new Map([['t150.b9', { data: Float32Array.from(f.data), shape: [3, 8, 8] }]]), labels: Array.from({ length: n }, (_, i) => (i * 7) % 4), count: n };
}

for (const o of [
  { head: 'linear', pool: 2 },
  { head: 'attention', attention: { dim: 8, heads: 2, layers: 1, prePoolSize: 4 } },
] as Partial<FitOptions>[]) {
  t.test(`a ${o.head} head trained on pre-pooled 8×8 features scores the same when it pools them itself`, async (t) => {
    const dir = await mkdtemp(join(tmpdir(), 'difrep-prepool-'));
    const checkpoint = join(dir, 'state.safetensors');
    const train = features(24, 1);
    const test = features(40, 2);
    const fit = await fitHead(e, train, test, { classes: 4, timesteps: [150], blocks: [9], epochs: 3, batchSize: 8, lr: 1e-2, checkpoint, ...o } as FitOptions);
    const rebuilt = await trainedHeadLogits(e, checkpoint, test);
    const c = countTopK(rebuilt.logits, test.labels);
    t.equal(c.top1 / test.count, fit.top1, 'top-1');
    t.equal(c.top5 / test.count, fit.top5, 'top-5');
    await rm(dir, { recursive: true });
  });
}
