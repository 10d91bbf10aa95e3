// DifFeed's feedback BatchNorm over the epochs: batch statistics in every epoch by default; with
// batchNormTrainEpochs k, the epochs after k train with the running statistics frozen (the released
// code after its first evaluation at epoch 7 stays in eval mode), and a resume keeps the choice.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { openSafetensors } from '../../src/model/checkpoint/safetensors.ts';
import { UNet } from '../../src/model/unet.ts';
import { type DifFeedFitOptions, fitDifFeed } from '../../src/train/fit-difeed.ts';
import { testEngine } from '../helpers/check.ts';
import { MINI_UNET, randomImages } from '../helpers/images.ts';

const e = await testEngine();
const unet = UNet.random(e, MINI_UNET, 11);
const source = randomImages(8);
const dir = await mkdtemp(join(tmpdir(), 'difrep-difeed-bn-'));
t.teardown(() => rm(dir, { recursive: true }));
const options = (checkpoint: string, more: Partial<DifFeedFitOptions> = {}): DifFeedFitOptions => ({
  classes: 4, head: { dim: 16, heads: 2, layers: 1, prePoolSize: 4 }, batchSize: 4, stepSize: 1, seed: 5, checkpoint, ...more,
});

async function runningStats(path: string): Promise<Map<string, Float32Array>> {
  const src = await openSafetensors(path);
  try {
    const keys = src.keys().filter((k) => k.includes('running_'));
    return new Map(await Promise.all(keys.map(async (k) => [k, await src.read(k)] as [string, Float32Array])));
  } finally {
    await src.close();
  }
}

t.test('batchNormTrainEpochs 1 of 2: the second epoch leaves the running statistics where the first left them', async (t) => {
  const one = join(dir, 'one.safetensors');
  const frozen = join(dir, 'frozen.safetensors');
  const live = join(dir, 'live.safetensors');
  await fitDifFeed(e, unet, source, source, options(one, { epochs: 1 }));
  const a = await fitDifFeed(e, unet, source, source, options(frozen, { epochs: 2, batchNormTrainEpochs: 1 }));
  const b = await fitDifFeed(e, unet, source, source, options(live, { epochs: 2 }));
  const [afterOne, afterFrozen, afterLive] = [await runningStats(one), await runningStats(frozen), await runningStats(live)];
  t.ok(afterOne.size >= 2, `${afterOne.size} running statistics saved`);
  for (const [k, v] of afterOne) {
    t.same(Array.from(afterFrozen.get(k)!), Array.from(v), `${k}: unchanged by the frozen epoch`);
    t.not(Array.from(afterLive.get(k)!).join(), Array.from(v).join(), `${k}: moved by a batch-statistics epoch`);
  }
  t.equal(a.losses[0], b.losses[0], 'the first epochs are the same run');
  t.not(a.losses[1], b.losses[1], 'the second epochs normalise differently');
  const liveBytes = e.memoryStats().liveBytes;
  await t.rejects(fitDifFeed(e, unet, source, source, options(frozen, { epochs: 3, resume: true })), /batchNormTrainEpochs 1 there, unset now/, 'a resume without the choice is refused');
  t.equal(e.memoryStats().liveBytes, liveBytes, 'the refused run freed its feedback layers, head and Adams');
});

// PyTorch's BatchNorm2d counts its training-mode batches in num_batches_tracked (an int64 buffer of
// its state_dict); the state left it out, so a strict load read 0 and a resume restarted the count.
t.test('the state keeps each feedback BatchNorm\'s num_batches_tracked (I64), and a resume continues the count', async (t) => {
  const path = join(dir, 'count.safetensors');
  const counts = async () => {
    const src = await openSafetensors(path);
    try {
      const keys = src.keys().filter((k) => k.endsWith('.num_batches_tracked'));
      return await Promise.all(keys.map(async (k) => [k, src.info(k)!.dtype, (await src.read(k))[0]] as const));
    } finally {
      await src.close();
    }
  };
  await fitDifFeed(e, unet, source, source, options(path, { epochs: 1 }));
  const first = await counts();
  t.ok(first.length >= 1, `${first.length} BatchNorm layers`);
  // 8 images in batches of 4: 2 training-mode batches an epoch.
  for (const [k, dtype, n] of first) t.same([dtype, n], ['I64', 2], `${k} after one epoch`);
  await fitDifFeed(e, unet, source, source, options(path, { epochs: 2, resume: true }));
  for (const [k, , n] of await counts()) t.equal(n, 4, `${k} after a resumed second epoch`);
});
