// The batches of one training epoch as the paper's code makes them: a seeded shuffle cut into full
// batches, the last partial one dropped (its DataLoader's drop_last=True, diffssl-spec §B.9), so no
// step weighs a handful of images as much as a full batch (and BatchNorm's running statistics are
// not last moved by those few).
import { seededShuffle } from './data/fashion-mnist.ts';

/** How many full batches an epoch over `count` images has (the last partial one dropped). */
export const batchesPerEpoch = (count: number, batchSize: number): number => Math.floor(count / batchSize);

/** Image indices of each full batch of an epoch over `count` images, shuffled by `seed`. */
export function epochBatches(count: number, batchSize: number, seed: number, what: string): number[][] {
  const full = batchesPerEpoch(count, batchSize);
  if (full === 0) throw new RangeError(`${what}: ${count} training images make no full batch of ${batchSize}: give a batch size of at most ${count}`);
  const order = seededShuffle(Array.from({ length: count }, (_, i) => i), seed);
  return Array.from({ length: full }, (_, b) => order.slice(b * batchSize, (b + 1) * batchSize));
}
