// DifFeed saves within an epoch (every checkpointEverySeconds) and a run stopped there resumes at
// the next batch to exactly the weights, BatchNorm statistics, optimizer state and losses of a run
// never stopped: it saved only at the end of each epoch, so a stop lost up to an epoch's work.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { openSafetensors, writeSafetensors } from '../../src/model/checkpoint/safetensors.ts';
import { UNet } from '../../src/model/unet.ts';
import { type DifFeedFitOptions, fitDifFeed } from '../../src/train/fit-difeed.ts';
import { testEngine } from '../helpers/check.ts';
import { MINI_UNET, randomImages } from '../helpers/images.ts';
import { checkSameState, stopAfterBatch } from '../helpers/training-runs.ts';

const e = await testEngine();
const unet = UNet.random(e, MINI_UNET, 11);
const source = randomImages(12);
const dir = await mkdtemp(join(tmpdir(), 'difrep-difeed-resume-'));
t.teardown(() => rm(dir, { recursive: true }));
const options = (checkpoint: string, more: Partial<DifFeedFitOptions> = {}): DifFeedFitOptions => ({
  classes: 4, head: { dim: 16, heads: 2, layers: 1, prePoolSize: 4 }, epochs: 2, batchSize: 4, stepSize: 1, seed: 3, checkpoint, ...more,
});

t.test('stopped after batch 2 of epoch 2 and resumed: the same state and losses as a run never stopped', async (t) => {
  const whole = await fitDifFeed(e, unet, source, source, options(join(dir, 'whole.safetensors')));
  const stopped = join(dir, 'stopped.safetensors');
  await t.rejects(fitDifFeed(e, unet, source, source, options(stopped, stopAfterBatch(1, 2))), /stopped/);
  const saved = await openSafetensors(stopped);
  t.match(JSON.parse(saved.metadata.progress), { epoch: 1, batch: 1 }, 'the last save was after batch 1 of epoch 2 (the stop came before batch 2 was saved)');
  await saved.close();
  // It has trained into epoch 2: --epochs 1 is refused (it evaluated a run of 1 epoch and a batch
  // and called it 1 epoch).
  await t.rejects(fitDifFeed(e, unet, source, source, options(stopped, { resume: true, epochs: 1 })), /has trained 1 epochs and 1 batches of epoch 2; --epochs 1 is fewer: give --epochs 2 or more/);
  // A state edited to say it saved after batch 9 of a 3-batch epoch would skip that epoch unseen.
  const edited = join(dir, 'edited.safetensors');
  /** The stopped state written to `edited` with `change` made to its progress. */
  const editProgress = async (change: Record<string, unknown>) => {
    const src = await openSafetensors(stopped);
    const all = Object.fromEntries(await Promise.all(src.keys().map(async (k) => [k, { shape: src.info(k)!.shape, data: await src.read(k) }])));
    await writeSafetensors(edited, all, { ...src.metadata, progress: JSON.stringify({ ...JSON.parse(src.metadata.progress), ...change }) });
    await src.close();
  };
  await editProgress({ batch: 9 });
  await t.rejects(fitDifFeed(e, unet, source, source, options(edited, { resume: true })), /corrupt training checkpoint: saved within epoch 2 after batch 9, but the epoch has 3 batches/);
  // A bad loss sum is named alone: DifFeed records no epochCorrect, which the message blamed too.
  await editProgress({ epochLoss: -1 });
  await t.rejects(fitDifFeed(e, unet, source, source, options(edited, { resume: true })), { message: /corrupt training checkpoint: its progress epochLoss -1 is not a finite sum$/ });
  let batchesRun = 0;
  const resumed = await fitDifFeed(e, unet, source, source, options(stopped, { resume: true, onBatch: () => void batchesRun++ }));
  t.equal(batchesRun, 2, 'only batches 2 and 3 of epoch 2 run again');
  t.same(resumed.losses, whole.losses, 'the same epoch losses');
  await checkSameState(t, join(dir, 'whole.safetensors'), stopped);
  t.equal(resumed.top1, whole.top1);
});
