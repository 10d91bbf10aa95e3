// A raw-pixel cache holds exactly the model input the U-Net sees, and train, knn and sweep read it
// without --t/--b (the miniature issue's pixel baseline under the same protocol as the features).
import { mkdir, mkdtemp, readdir, readFile, rename, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { EXPERIMENT_COMMANDS } from '../../src/cli/experiments.ts';
import { balancedSubset, loadFashionMnist, toModelInput } from '../../src/train/data/fashion-mnist.ts';
import { openFeatureCache } from '../../src/train/extract.ts';

const dir = await mkdtemp(join(tmpdir(), 'difrep-pixels-'));
t.teardown(() => rm(dir, { recursive: true }));
const run = (command: string, ...args: string[]) => EXPERIMENT_COMMANDS[command](args);

t.test('extract --features pixels stores the 16×16 model input of each image', async (t) => {
  const model = new URL('../../models/fmnist16.json', import.meta.url).pathname;
  for (const split of ['train', 'test']) {
    t.equal(await run('extract', '--features', 'pixels', '--model', model, '--split', split, '--per-class', '4', '--chunk', '16', '--out', join(dir, split)), 0);
  }
  const cache = await openFeatureCache(join(dir, 'train'));
  const { data, shape } = await cache.features(0, 0);
  t.same(shape, [3, 16, 16]);
  const ds = await loadFashionMnist('train');
  const idx = balancedSubset(ds.labels, 4, 0);
  t.same(Array.from(cache.labels), idx.map((i) => ds.labels[i]));
  t.same(Array.from(data), Array.from(toModelInput(ds, idx, 16)), 'the exact input x0 the U-Net is given');
  await t.rejects(run('extract', '--features', 'pixels', '--model', model, '--t', '90', '--out', join(dir, 'x')), /no --t, --b or --checkpoint/);
  // A pool larger than the image keeps the image (it was interpolated up to 48×48).
  t.equal(await run('extract', '--features', 'pixels', '--model', model, '--split', 'train', '--per-class', '1', '--pool', '48', '--out', join(dir, 'pool48')), 0);
  const big = await (await openFeatureCache(join(dir, 'pool48'))).features(0, 0);
  t.same(big.shape, [3, 16, 16]);
  t.same(Array.from(big.data.subarray(0, 3 * 256)), Array.from(data.subarray(0, 3 * 256)), 'the model input itself');
});

t.test('train, knn and sweep read a pixel cache without --t/--b', async (t) => {
  t.equal(await run('train', '--train', join(dir, 'train'), '--test', join(dir, 'test'), '--pool', '4', '--epochs', '1', '--batch', '8', '--standardize', '--out', join(dir, 'linear')), 0);
  const result = JSON.parse(await readFile(join(dir, 'linear', 'result.json'), 'utf8'));
  t.equal(result.features, 'pixels');
  t.equal(result.standardize, true);
  t.equal(result.params, 3 * 4 * 4 * 10 + 10, 'a linear layer on 3 × 4 × 4 pooled pixels');
  // No --pool: a pixel cache is compared as cached (pooled to 1, the U-Net features' default, each
  // grey image would be one value and every cosine ±1).
  t.equal(await run('knn', '--train', join(dir, 'train'), '--test', join(dir, 'train'), '--k', '1', '--out', join(dir, 'knn.json')), 0);
  const knn = JSON.parse(await readFile(join(dir, 'knn.json'), 'utf8'));
  t.equal(knn.pool, 0);
  t.equal(knn.results[0].top1, 1, 'each image is its own nearest neighbour');
  await t.rejects(run('train', '--train', join(dir, 'train'), '--test', join(dir, 'test'), '--pool', '32', '--epochs', '1', '--out', join(dir, 'z')),
    /features pixels: cannot pool 16×16 maps to 32×32: pooling only shrinks a map; ask for a pool of at most 16 \(the head's pool\)/);
  await t.rejects(run('knn', '--train', join(dir, 'train'), '--test', join(dir, 'train'), '--pool', '17', '--k', '1'), /t 0, b 0: cannot pool 16×16 maps to 17×17: pooling only shrinks a map; ask for a pool of at most 16 \(the cache holds the full maps\)$/m);
  await t.rejects(run('train', '--train', join(dir, 'train'), '--test', join(dir, 'test'), '--b', '9', '--out', join(dir, 'y')), /raw-pixel cache: it has no blocks/);
  // The best row is named as pixels, not as block 0 at t 0.
  const lines: string[] = [];
  const log = console.log;
  console.log = (line: string) => void lines.push(line);
  try {
    t.equal(await run('sweep', '--train', join(dir, 'train'), '--test', join(dir, 'test'), '--pool', '2', '--standardize', 'both', '--epochs', '1', '--batch', '8', '--out', join(dir, 'sweep')), 0);
  } finally {
    console.log = log;
  }
  t.match(lines.join('\n'), /highest test top-1 of the grid: pixels, pool 2/);
  const sweep = JSON.parse(await readFile(join(dir, 'sweep', 'sweep.json'), 'utf8'));
  t.same(sweep.rows.map((r: { standardize: boolean; pool: number }) => [r.pool, r.standardize]), [[2, false], [2, true]]);
  t.ok((await readFile(join(dir, 'sweep', 'sweep-pool2-standardized.png'))).length > 100);
  // Again into the same folder with another grid: the first run's charts beside these results read as theirs.
  t.equal(await run('sweep', '--train', join(dir, 'train'), '--test', join(dir, 'test'), '--pool', '4', '--epochs', '1', '--batch', '8', '--out', join(dir, 'sweep')), 0);
  t.same((await readdir(join(dir, 'sweep'))).sort(), ['sweep-pool4.png', 'sweep-pool4.svg', 'sweep.json'], 'only this run\'s charts');
  const again = JSON.parse(await readFile(join(dir, 'sweep', 'sweep.json'), 'utf8'));
  t.match(again, { charts: ['sweep-pool4.png'], epochs: 1, batch: 8, lr: 1e-3, stepSize: 7, gamma: 0.1, seed: 0, classes: 10 }, 'the whole recipe');
});

t.test('sweep warns, as train does, about dimensions constant over the training split when standardising', async (t) => {
  // At full resolution some border pixels of Fashion-MNIST are 0 in all 40 training images.
  const warnings: string[] = [];
  const error = console.error;
  console.error = (line: string) => void warnings.push(line);
  try {
    t.equal(await run('train', '--train', join(dir, 'train'), '--test', join(dir, 'test'), '--pool', '16', '--standardize', '--epochs', '1', '--batch', '8', '--out', join(dir, 'std16')), 0);
    const trainWarning = warnings.splice(0).join('\n');
    t.match(trainWarning, /feature dimensions constant over the 40 training images \(pixels: \d+ of 768\)/);
    t.equal(await run('sweep', '--train', join(dir, 'train'), '--test', join(dir, 'test'), '--pool', '16', '--standardize', 'on', '--epochs', '1', '--batch', '8', '--out', join(dir, 'sweep16')), 0);
    t.match(warnings.join('\n'), /sweep, pool 16: warning: feature dimensions constant over the 40 training images \(pixels: \d+ of 768\)/);
    t.equal(/\(pixels: (\d+) of/.exec(warnings.join('\n'))?.[1], /\(pixels: (\d+) of/.exec(trainWarning)?.[1], 'the same dimensions as train finds');
  } finally {
    console.error = error;
  }
});

t.test('sweep tries every pool of its grid before training any probe', async (t) => {
  const { loadCachedFeatures } = await import('../../src/train/cached-features.ts');
  const { sweepLinearProbes } = await import('../../src/train/sweep.ts');
  const { testEngine } = await import('../helpers/check.ts');
  const [train, test] = [await loadCachedFeatures(join(dir, 'train'), [0], [0]), await loadCachedFeatures(join(dir, 'test'), [0], [0])];
  let rows = 0;
  await t.rejects(sweepLinearProbes(await testEngine(), train, test, { timesteps: [0], blocks: [0], pools: [1, 2, 32], standardize: [false], classes: 10, epochs: 1, batchSize: 8, lr: 1e-3, onRow: () => rows++ }),
    /features pixels, pool 32: cannot pool 16×16 maps to 32×32/);
  t.equal(rows, 0, 'no probe trained (pools 1 and 2 trained first, and were lost)');
});

t.test('eval rebuilds a trained head from its state and scores any split', async (t) => {
  t.equal(await run('eval', '--run', join(dir, 'linear'), '--features', join(dir, 'test'), '--png', join(dir, 'confusion.png')), 0);
  const trained = JSON.parse(await readFile(join(dir, 'linear', 'result.json'), 'utf8'));
  const scored = JSON.parse(await readFile(join(dir, 'linear', 'eval-test.json'), 'utf8'));
  t.equal(scored.top1, trained.top1, 'the same top-1 as the evaluation at the end of training (same weights, same standardisation)');
  t.equal(scored.top5, trained.top5);
  const diagonal = scored.confusion.reduce((p: number, row: number[], c: number) => p + row[c], 0);
  t.equal(diagonal / scored.images, scored.top1, 'top-1 is the confusion matrix\'s trace');
  t.equal(scored.images, 40);
  // The report names the state it scored (a stopped run's state is not its last epoch).
  t.same(scored.state, { epochs: 1, batches: 0, steps: 5, finished: true });
  t.ok((await readFile(join(dir, 'confusion.png'))).length > 100);
  // A run without a result.json newer than its state has not finished: eval says so (it scored it silently).
  const { rename: move } = await import('node:fs/promises');
  await move(join(dir, 'linear', 'result.json'), join(dir, 'linear-result.json'));
  const unfinished: string[] = [];
  const consoleError = console.error;
  console.error = (line: string) => void unfinished.push(line);
  try {
    t.equal(await run('eval', '--run', join(dir, 'linear'), '--features', join(dir, 'test'), '--out', join(dir, 'unfinished.json')), 0);
  } finally {
    console.error = consoleError;
    await move(join(dir, 'linear-result.json'), join(dir, 'linear', 'result.json'));
  }
  t.match(unfinished.join('\n'), /linear has no result\.json newer than its state: its training has not finished \(stopped, or still running\); scoring the state saved after 1 epochs \(5 steps\)/);
  t.equal(JSON.parse(await readFile(join(dir, 'unfinished.json'), 'utf8')).state.finished, false);
  await t.rejects(run('eval', '--run', dir, '--features', join(dir, 'test'), '--out', join(dir, 'none.json')), /difrep eval: .* holds no trained head \(.*state\.safetensors\): give the --out folder of a `difrep train` run/);
  // Another cache folder named test: its default report name is taken, so eval asks for --out.
  await mkdir(join(dir, 'other'), { recursive: true });
  await symlink(join(dir, 'test'), join(dir, 'other', 'test'));
  await t.rejects(run('eval', '--run', join(dir, 'linear'), '--features', join(dir, 'other', 'test')), /eval-test\.json holds the report of another feature cache \(.*\/test\); give --out to keep both/);
  // Relative paths from two folders: the report recorded "test" as typed, which resolved from the
  // second folder to its own ./test, so that cache's scores replaced the first's without a word.
  const cwd = process.cwd();
  try {
    process.chdir(dir);
    t.equal(await run('eval', '--run', 'linear', '--features', 'test'), 0);
    t.equal(JSON.parse(await readFile(join(dir, 'linear', 'eval-test.json'), 'utf8')).features, join(dir, 'test'), 'the report records the absolute path');
    process.chdir(join(dir, 'other'));
    await t.rejects(run('eval', '--run', join('..', 'linear'), '--features', 'test'), /holds the report of another feature cache/);
  } finally {
    process.chdir(cwd);
  }
  // The head's standardisation statistics come from its training cache: moved away, eval says so.
  await rename(join(dir, 'train'), join(dir, 'train-moved'));
  await t.rejects(run('eval', '--run', join(dir, 'linear'), '--features', join(dir, 'test')), /linear was trained on standardised features, whose statistics come from its training cache .*train, which cannot be read: feature cache .*train does not exist.*; put that cache back at that path/);
  await rename(join(dir, 'train-moved'), join(dir, 'train'));
  await t.rejects(run('eval', '--run', join(dir, 'nothing'), '--features', join(dir, 'test')), /--run .*nothing is not a folder: give the --out folder of a `difrep train` run/);
  // DifFeed and pretraining states (as their runs write them: kind and settings) hold no head over cached features.
  const { writeSafetensors } = await import('../../src/model/checkpoint/safetensors.ts');
  for (const [name, settings, what] of [['difeed-run', { head: 'difeed', classes: 10 }, /holds a DifFeed head \(it needs the U-Net live/], ['pretrain-run', { lr: 1e-4, batchSize: 16 }, /holds no head \(a pretraining run\?\)/]] as const) {
    await mkdir(join(dir, name), { recursive: true });
    await writeSafetensors(join(dir, name, 'state.safetensors'), {}, { kind: 'difrep-training-state', progress: '{}', settings: JSON.stringify(settings) });
    await t.rejects(run('eval', '--run', join(dir, name), '--features', join(dir, 'test')), what);
  }
  // The probe pools to 4: a cache pooled to 2 at extraction is refused, not enlarged (it scored as if upsampled).
  const model = new URL('../../models/fmnist16.json', import.meta.url).pathname;
  t.equal(await run('extract', '--features', 'pixels', '--model', model, '--split', 'test', '--per-class', '4', '--pool', '2', '--out', join(dir, 'test-pool2')), 0);
  await t.rejects(run('eval', '--run', join(dir, 'linear'), '--features', join(dir, 'test-pool2')), /cannot pool 2×2 maps to 4×4: pooling only shrinks a map/);
  // result.json repeats the run's settings, with the maps the head read after pooling (a cache
  // pooled at extraction gives an attention head fewer tokens than its --pre-pool).
  t.equal(await run('train', '--head', 'attention', '--dim', '16', '--layers', '1', '--heads', '2', '--pre-pool', '4', '--train', join(dir, 'train'), '--test', join(dir, 'test'), '--epochs', '1', '--batch', '8', '--out', join(dir, 'attention')), 0);
  const attention = JSON.parse(await readFile(join(dir, 'attention', 'result.json'), 'utf8'));
  t.same(attention.settings.inputShapes, { pixels: [3, 4, 4] });
  t.has(attention.settings, { dropLast: true, stepSize: 7, gamma: 0.1, seed: 0, attention: { dim: 16, layers: 1, heads: 2, prePoolSize: 4 } });
  // eval pools an attention head's maps as its training did, and only where that is exact: a cache
  // pooled to 6 at extraction (16 → 6 → 4 is not 16 → 4) or to 2 (fewer tokens) was scored as it was.
  t.equal(await run('eval', '--run', join(dir, 'attention'), '--features', join(dir, 'test')), 0);
  t.equal(JSON.parse(await readFile(join(dir, 'attention', 'eval-test.json'), 'utf8')).top1, attention.top1, 'the training run\'s own score');
  // Scored on its own training cache, an unstandardised head said nothing of it (train, knn, sweep and a standardised eval did).
  const warnings: string[] = [];
  const error = console.error;
  console.error = (line: string) => void warnings.push(line);
  try {
    t.equal(await run('eval', '--run', join(dir, 'attention'), '--features', join(dir, 'train')), 0);
  } finally {
    console.error = error;
  }
  t.match(warnings.join('\n'), /both hold images of .*: the test scores are on training images/);
  t.equal(await run('extract', '--features', 'pixels', '--model', model, '--split', 'test', '--per-class', '4', '--pool', '6', '--out', join(dir, 'test-pool6')), 0);
  await t.rejects(run('eval', '--run', join(dir, 'attention'), '--features', join(dir, 'test-pool6')), /features pixels: these 6×6 maps were pooled from 16×16; pooling them to 4×4/);
  await t.rejects(run('eval', '--run', join(dir, 'attention'), '--features', join(dir, 'test-pool2')), /features pixels: these 2×2 maps were pooled from 16×16 at extraction, but the attention tokenizer pools to 4×4: this head was trained on 4×4 tokens: score it on a cache extracted with --pool 0 \(or at least 4\)$/);
  // eval has no --pre-pool: its message says what to score the head on (it said to give --pre-pool 2).
  // Training on such a cache gave the head 4 tokens and a [3, 2, 2] LayerNorm under prePoolSize 4.
  await t.rejects(run('train', '--head', 'attention', '--dim', '16', '--layers', '1', '--heads', '2', '--pre-pool', '4', '--train', join(dir, 'test-pool2'), '--test', join(dir, 'test-pool2'), '--epochs', '1', '--out', join(dir, 'attention-pool2')), /these 2×2 maps were pooled from 16×16 at extraction, but the attention tokenizer pools to 4×4: extract them with --pool 0 \(or at least 4\), or give --pre-pool 2$/);
  await t.rejects(run('train', '--head', 'attention', '--dim', '10', '--heads', '4', '--train', join(dir, 'train'), '--test', join(dir, 'test'), '--out', join(dir, 'attention-10')), /--dim 10 does not split into --heads 4/);
  await t.rejects(run('train', '--head', 'difeed', '--train', join(dir, 'train'), '--standardize', '--out', join(dir, 'difeed-x')), /--head difeed reads images, not feature caches: leave out --train, --standardize/);
});

t.test('a test cache of another extraction is refused; one of the training split is scored with a warning', async (t) => {
  t.equal(await run('extract', '--features', 'pixels', '--model', 'adm32-mini', '--split', 'test', '--per-class', '4', '--out', join(dir, 'test-32')), 0);
  await t.rejects(run('knn', '--train', join(dir, 'train'), '--test', join(dir, 'test-32'), '--k', '1'),
    /the training cache .*train and the test cache .*test-32 come from different extractions \(config .* against .*\): extract both splits with the same --model and --checkpoint/);
  const warnings: string[] = [];
  const error = console.error;
  console.error = (line: string) => void warnings.push(line);
  try {
    t.equal(await run('knn', '--train', join(dir, 'train'), '--test', join(dir, 'train'), '--k', '1', '--out', join(dir, 'knn-self.json')), 0);
  } finally {
    console.error = error;
  }
  t.match(warnings.join('\n'), /both hold images of fashion-mnist\/train: the test scores are on training images/);
});

t.test('a head records its training cache: eval and --resume refuse that path extracted again with other settings', async (t) => {
  const model = new URL('../../models/fmnist16.json', import.meta.url).pathname;
  const extractTrain = (seed: string) => run('extract', '--features', 'pixels', '--model', model, '--split', 'train', '--per-class', '4', '--seed', seed, '--out', join(dir, 'train-again'));
  t.equal(await extractTrain('0'), 0);
  t.equal(await run('train', '--train', join(dir, 'train-again'), '--test', join(dir, 'test'), '--pool', '4', '--epochs', '1', '--batch', '8', '--standardize', '--out', join(dir, 'linear-again')), 0);
  t.equal(await run('eval', '--run', join(dir, 'linear-again'), '--features', join(dir, 'test')), 0);
  // Another subset of the same size at the same path: the standardisation would come from other images.
  await rm(join(dir, 'train-again'), { recursive: true });
  t.equal(await extractTrain('1'), 0);
  await t.rejects(run('eval', '--run', join(dir, 'linear-again'), '--features', join(dir, 'test')),
    /train-again no longer holds the features .*linear-again was trained on \(seed \(0 → 1\)\), and the head's standardisation statistics come from them/);
  await t.rejects(run('train', '--train', join(dir, 'train-again'), '--test', join(dir, 'test'), '--pool', '4', '--epochs', '2', '--batch', '8', '--standardize', '--resume', '--out', join(dir, 'linear-again')),
    /cannot resume .*: it was started with other settings \(data\.trainCache\.seed 0 there, 1 now\)/);
  // The test cache is checked against the recorded signature even where the training cache is gone.
  await rm(join(dir, 'train-again'), { recursive: true });
  await t.rejects(run('eval', '--run', join(dir, 'linear-again'), '--features', join(dir, 'test-32')), /come from different extractions \(config/);
});

t.test('the pixel baseline reads the whole image unless --pool says otherwise (train\'s default pool of 2 read four grey values: near chance)', async (t) => {
  t.equal(await run('train', '--train', join(dir, 'train'), '--test', join(dir, 'test'), '--epochs', '1', '--batch', '8', '--out', join(dir, 'whole')), 0);
  const whole = JSON.parse(await readFile(join(dir, 'whole', 'result.json'), 'utf8'));
  t.equal(whole.pool, 16);
  t.equal(whole.params, 3 * 16 * 16 * 10 + 10, 'a linear layer on the 3 × 16 × 16 model input');
  t.equal(await run('sweep', '--train', join(dir, 'train'), '--test', join(dir, 'test'), '--epochs', '1', '--batch', '8', '--out', join(dir, 'sweep-whole')), 0);
  const sweep = JSON.parse(await readFile(join(dir, 'sweep-whole', 'sweep.json'), 'utf8'));
  t.same(sweep.rows.map((r: { pool: number }) => r.pool), [1, 2, 4, 16], 'the default pools and the whole image');
  // --t and --b mean nothing for pixels: refused (knn read past them).
  await t.rejects(run('knn', '--train', join(dir, 'train'), '--test', join(dir, 'test'), '--t', '300', '--k', '1'), /raw-pixel cache: it has no blocks or timesteps, leave out --b and --t/);
  await t.rejects(run('train', '--train', join(dir, 'train'), '--test', join(dir, 'test'), '--t', '300', '--out', join(dir, 'tt')), /leave out --b and --t/);
});
