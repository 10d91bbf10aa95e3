// Training epochs take full batches only, the last partial one dropped as the paper's DataLoader
// does (drop_last=True): 10 images in batches of 4 are two steps of 4, not a third of 2 weighing
// its two images twice each.
import t from 'tap';
import { epochBatches } from '../../src/train/epoch-batches.ts';
import { type FeatureArrays, fitHead } from '../../src/train/fit.ts';
import { randomNd, testEngine } from '../helpers/check.ts';

t.test('full batches of distinct images from a seeded shuffle; none when the batch is larger than the set', async (t) => {
  const batches = epochBatches(10, 4, 3, 'probe');
  t.same(batches.map((b) => b.length), [4, 4]);
  const seen = batches.flat();
  t.equal(new Set(seen).size, 8, 'no image twice');
  t.ok(seen.every((i) => Number.isInteger(i) && i >= 0 && i < 10));
  t.same(epochBatches(10, 4, 3, 'probe'), batches, 'same seed, same batches');
  t.same(epochBatches(8, 4, 1, 'probe').flat().sort((a, b) => a - b), [0, 1, 2, 3, 4, 5, 6, 7], 'a multiple of the batch: every image');
  t.throws(() => epochBatches(3, 4, 0, 'DifFeed'), /DifFeed: 3 training images make no full batch of 4: give a batch size of at most 3/);
});

t.test('fitHead takes floor(count / batch) steps an epoch', async (t) => {
  const e = await testEngine();
  const set = (n: number, seed: number): FeatureArrays => ({
    features: new Map([['t150.b9', { data: Float32Array.from(randomNd([n, 4, 2, 2], seed).data), shape: [4, 2, 2] }]]), labels: Array.from({ length: n }, (_, i) => i % 4), count: n,
  });
  const steps: number[] = [];
  await fitHead(e, set(10, 1), set(4, 2), { head: 'linear', classes: 4, timesteps: [150], blocks: [9], pool: 1, epochs: 2, batchSize: 4, onBatch: (_, of) => void steps.push(of) });
  t.same(steps, [2, 2, 2, 2]);
});
