// The experiment commands end to end, as a user runs them (CI-sized: 40 images per split).
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { decode } from 'fast-png';
import t from 'tap';
import { shardFrom } from '../../src/cli/experiments.ts';
import { loadCachedFeatures } from '../../src/train/cached-features.ts';
import { loadFashionMnist, toModelInput } from '../../src/train/data/fashion-mnist.ts';
import { PIXEL_BLOCK } from '../../src/train/extract.ts';

const run = promisify(execFile);
const main = new URL('../../src/cli/main.ts', import.meta.url).pathname;
const difrep = (...args: string[]) => run(process.execPath, ['--import', 'tsx', main, ...args], { encoding: 'utf8', maxBuffer: 1 << 24 });

t.test('--help lists every option with its default; unknown options are errors', async (t) => {
  const { stdout } = await difrep('extract', '--help');
  t.match(stdout, /--per-class N .*\[an integer ≥ 0 and ≤ 10000000\] \(default 0\)/);
  t.match(stdout, /--t LIST .*\(default 150\)/);
  const err = await difrep('extract', '--nope', '1').then(() => null, (e: { stderr: string; code: number }) => e);
  t.match(err?.stderr, /unknown option --nope/);
  t.equal(err?.code, 2, "a usage error exits 2");
});

t.test('cached maps are pooled with PyTorch\'s adaptive windows', async (t) => {
  const { poolCached } = await import('../../src/train/cached-features.ts');
  // One image, one channel, 3×3 → 2×2: windows rows [0,2) and [1,3), same for columns.
  const r = poolCached({ data: Float32Array.from([1, 2, 3, 4, 5, 6, 7, 8, 9]), shape: [1, 3, 3] }, 1, 2);
  t.same(r.shape, [1, 2, 2]);
  t.same(Array.from(r.data), [3, 4, 6, 7]);
  t.same(Array.from(poolCached({ data: Float32Array.from([1, 2, 3, 4]), shape: [1, 2, 2] }, 1, 1).data), [2.5]);
});

t.test('pooled maps pool again only where that equals pooling the full maps', async (t) => {
  const { poolCached } = await import('../../src/train/cached-features.ts');
  // 4×4 maps of 0..15 pooled to 2×2 (whole 2×2 windows): 2.5, 4.5, 10.5, 12.5; to 1: the mean 7.5.
  const full = { data: Float32Array.from({ length: 16 }, (_, i) => i), shape: [1, 4, 4] };
  const half = poolCached(full, 1, 2);
  t.same(Array.from(half.data), [2.5, 4.5, 10.5, 12.5]);
  t.equal(half.sourceSize, 4, 'the result records what it was pooled from');
  t.same(Array.from(poolCached(half, 1, 1).data), [7.5], '4 → 2 → 1 is 4 → 1');
  // 3×3 → 2×2 takes overlapping windows (rows [0,2) and [1,3)): its mean counts the middle row twice.
  const overlapping = poolCached({ data: Float32Array.from({ length: 9 }, (_, i) => i), shape: [1, 3, 3] }, 1, 2);
  t.throws(() => poolCached(overlapping, 1, 1), /these 2×2 maps were pooled from 3×3; pooling them to 1×1 would not equal pooling the full maps to 1×1 .*divides 2/);
  t.throws(() => poolCached({ data: new Float32Array(16), shape: [1, 4, 4], sourceSize: 16 }, 1, 3), /pooled from 16×16; pooling them to 3×3/, '16 → 4 → 3 is not 16 → 3');
  t.throws(() => poolCached({ data: new Float32Array(16), shape: [1, 4, 4], sourceSize: Number.NaN }, 1, 2), /pooled from maps of unknown size/);
  t.same(poolCached({ data: new Float32Array(16), shape: [1, 4, 4], sourceSize: 16 }, 1, 2).shape, [1, 2, 2], '16 → 4 → 2 is 16 → 2');
});

t.test('shards come from --shard, Slurm job arrays or Kubernetes indexed jobs', async (t) => {
  t.same(shardFrom('1/4', undefined, {}), { index: 1, count: 4 });
  t.same(shardFrom(undefined, undefined, { SLURM_ARRAY_TASK_ID: '3', SLURM_ARRAY_TASK_COUNT: '8' }), { index: 3, count: 8 });
  t.same(shardFrom(undefined, undefined, { SLURM_ARRAY_TASK_ID: '5', SLURM_ARRAY_TASK_MIN: '1', SLURM_ARRAY_TASK_COUNT: '8' }), { index: 4, count: 8 });
  t.same(shardFrom(undefined, '3', { JOB_COMPLETION_INDEX: '2' }), { index: 2, count: 3 });
  t.throws(() => shardFrom(undefined, undefined, { JOB_COMPLETION_INDEX: '2' }), /--shards n/);
  t.throws(() => shardFrom('4/4', undefined, {}), /out of range/);
  t.equal(shardFrom(undefined, undefined, {}), undefined);
  // --array=0-6:2: tasks 0, 2, 4, 6 are shards 0..3 (task 4 was "shard 4/4 out of range", shards 1 and 3 never ran).
  t.same([0, 2, 4, 6].map((id) => shardFrom(undefined, undefined, { SLURM_ARRAY_TASK_ID: String(id), SLURM_ARRAY_TASK_MIN: '0', SLURM_ARRAY_TASK_STEP: '2', SLURM_ARRAY_TASK_COUNT: '4' })),
    [0, 1, 2, 3].map((index) => ({ index, count: 4 })));
  t.throws(() => shardFrom(undefined, undefined, { SLURM_ARRAY_TASK_ID: '5', SLURM_ARRAY_TASK_MIN: '0', SLURM_ARRAY_TASK_STEP: '2', SLURM_ARRAY_TASK_COUNT: '4' }), /not SLURM_ARRAY_TASK_MIN 0 plus a multiple of SLURM_ARRAY_TASK_STEP 2/);
  t.throws(() => shardFrom(undefined, '3', { JOB_COMPLETION_INDEX: '' }), /JOB_COMPLETION_INDEX must be a whole number, got ""/, 'an empty index is not shard 0');
  // --shards outside an indexed job was ignored: all images extracted, or the share of --shard.
  t.throws(() => shardFrom(undefined, '4', {}), /--shards 4 goes with Kubernetes' JOB_COMPLETION_INDEX, which is not set: give this worker's share as --shard i\/n/);
  t.throws(() => shardFrom('0/2', '4', {}), /which is not set/);
  t.throws(() => shardFrom('0/2', '4', { JOB_COMPLETION_INDEX: '1' }), /which is overridden here/);
  t.throws(() => shardFrom(undefined, '4x', { JOB_COMPLETION_INDEX: '1' }), /--shards must be a whole number, got "4x"/);
});

t.test('extract → train → knn → cka on Fashion-MNIST with the adm32-mini reference weights', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'difrep-cli-'));
  const ckpt = new URL('../fixtures/adm32-mini.safetensors', import.meta.url).pathname;
  for (const split of ['train', 'test']) {
    const { stdout, stderr } = await difrep('extract', '--model', 'adm32-mini', '--checkpoint', ckpt, '--split', split, '--per-class', '4',
      '--t', '90,150', '--b', '5,9', '--pool', '2', '--chunk', '16', '--out', join(dir, split));
    t.match(stdout, /extracted 40 images .* images\/s/);
    t.match(stderr, /block mapping for this 9-block U-Net/);
  }
  const { stdout: trained } = await difrep('train', '--train', join(dir, 'train'), '--test', join(dir, 'test'), '--head', 'linear', '--t', '150', '--b', '9', '--pool', '2', '--epochs', '2', '--batch', '8', '--out', join(dir, 'linear'));
  t.match(trained, /epoch 2\/2: loss/);
  const result = JSON.parse(await readFile(join(dir, 'linear', 'result.json'), 'utf8'));
  t.ok(result.top1 >= 0 && result.top1 <= 1 && result.losses.length === 2 && result.optimizer === 'adam');
  // Without --b, DifFormer reads the paper's B = {19, 24, 30} mapped onto the 9 blocks: {5, 9} (it required --b).
  const { stdout: fused, stderr: fusedMapping } = await difrep('train', '--train', join(dir, 'train'), '--test', join(dir, 'test'), '--head', 'difformer', '--t', '90,150',
    '--dim', '16', '--heads', '2', '--layers', '1', '--pre-pool', '2', '--epochs', '1', '--batch', '8', '--out', join(dir, 'difformer'));
  t.match(fusedMapping, /block mapping for this 9-block U-Net: .*DifFormer \{19,24,30\} ↦ \{5,9\}/);
  t.match(fused, /difformer: top-1/);
  t.has(JSON.parse(await readFile(join(dir, 'difformer', 'result.json'), 'utf8')), { timesteps: [90, 150], blocks: [5, 9] });
  const { stdout: knn } = await difrep('knn', '--train', join(dir, 'train'), '--test', join(dir, 'train'), '--b', '9', '--k', '1');
  t.match(knn, /kNN k=1: top-1 100\.00%/, 'kNN of a set against itself is perfect');
  t.notMatch(knn, /any label is in the top 5/, 'ten classes: top-5 means something');
  // Five neighbours may still span fewer than five classes: the top-5 note was printed only at k < 5.
  const { stdout: knn5 } = await difrep('knn', '--train', join(dir, 'train'), '--test', join(dir, 'test'), '--b', '9', '--k', '5');
  t.match(knn5, /kNN's top-5 ranks only the classes with a neighbour among the k, fewer than five where the neighbours span fewer/);
  // Without --b, the paper's b24 mapped onto adm32-mini's 9 blocks: b9, printed with the mapping.
  const { stdout: knnMapped, stderr: mapping } = await difrep('knn', '--train', join(dir, 'train'), '--test', join(dir, 'test'), '--k', '1', '--out', join(dir, 'knn.json'));
  t.match(mapping, /block mapping for this 9-block U-Net: b24 ↦ 9/);
  t.match(knnMapped, /kNN k=1: top-1/);
  t.has(JSON.parse(await readFile(join(dir, 'knn.json'), 'utf8')), { b: 9, t: 150, classes: 10, train: join(dir, 'train'), test: join(dir, 'test'), top5Ranks: 'classes with a neighbour among the k (the reference ranks every class)' });
  const { stdout: cka, stderr: ckaWarning } = await difrep('cka', '--features', join(dir, 'test'), '--t', '90', '--b', '5,9', '--out', join(dir, 'cka.json'), '--png', join(dir, 'cka.png'));
  t.match(cka, /linear CKA at t90 over 40 images/);
  const m = JSON.parse(await readFile(join(dir, 'cka.json'), 'utf8'));
  t.has(m, { timesteps: [90], blocks: [5, 9], features: join(dir, 'test'), images: 40 });
  // 40 images of 2 × 2 pooled maps of 64 (b5) and 32 (b9) channels: √(128·256 / (168·296)) ≈ 0.81 for unrelated isotropic features.
  t.same(m.dims, [256, 128]);
  t.match(ckaWarning, /40 images of 128–256 values each: linear CKA of unrelated features would read about 0\.81/);
  t.ok(Math.abs(m.matrix[0][0] - 1) < 1e-5 && Math.abs(m.matrix[1][1] - 1) < 1e-5, 'diagonal is 1');
  // Timesteps without --b: compared at the paper's b24 (CLARIFICATIONS, Figure 5), mapped onto the 9 blocks.
  const { stderr: ckaMapping } = await difrep('cka', '--features', join(dir, 'test'), '--t', '90,150', '--out', join(dir, 'cka-t.json'));
  t.match(ckaMapping, /block mapping for this 9-block U-Net: b24 ↦ 9/);
  t.has(JSON.parse(await readFile(join(dir, 'cka-t.json'), 'utf8')), { timesteps: [90, 150], blocks: [9], labels: ['t90', 't150'] });
  const png = decode(await readFile(join(dir, 'cka.png')));
  t.ok(png.width > 48 && png.height > 48, `heatmap ${png.width}x${png.height}`);
  const { stdout: sweep } = await difrep('sweep', '--train', join(dir, 'train'), '--test', join(dir, 'test'), '--t', '90,150', '--b', '5,9', '--pool', '1,2', '--epochs', '1', '--batch', '8', '--out', join(dir, 'sweep'));
  t.match(sweep, /highest test top-1 of the grid: b \d+, t \d+, pool \d.*picked on the test split itself, so optimistic/);
  const sw = JSON.parse(await readFile(join(dir, 'sweep', 'sweep.json'), 'utf8'));
  t.equal(sw.rows.length, 8, '2 blocks × 2 timesteps × 2 pools');
  t.ok(decode(await readFile(join(dir, 'sweep', 'sweep-pool2.png'))).width > 48);
  const { stdout: merged } = await difrep('merge', '--features', join(dir, 'train'));
  t.match(merged, /complete, 40 images/);
  // The cache's maps of b 9 (32×32 in adm32-mini) were pooled to 2×2 at extraction, which its config tells.
  const { loadCachedFeatures } = await import('../../src/train/cached-features.ts');
  const loaded = await loadCachedFeatures(join(dir, 'train'), [150], [9], 1);
  t.equal(loaded.features.get('t150.b9')!.sourceSize, 32, 'pooled maps know their source size');
  const bad = await difrep('train', '--train', join(dir, 'train'), '--test', join(dir, 'test'), '--b', '7', '--out', join(dir, 'x')).then(() => null, (e: { stderr: string }) => e);
  t.match(bad?.stderr, /no features for t=150, b=7/);
  // A run refused once its folder was made (a pool finer than the cache's) leaves no empty folder behind.
  const finer = await difrep('train', '--train', join(dir, 'train'), '--test', join(dir, 'test'), '--b', '9', '--pool', '4', '--epochs', '1', '--out', join(dir, 'p4')).then(() => null, (e: { stderr: string }) => e);
  t.ok(finer, 'a pool of 4 on maps cached at 2 is refused');
  const { existsSync } = await import('node:fs');
  t.notOk(existsSync(join(dir, 'p4')), 'and its --out is not left behind');
  await rm(dir, { recursive: true });
});

t.test('extract reads an ImageFolder, skips and reports an unreadable image', async (t) => {
  const { encode } = await import('fast-png');
  const { mkdir, writeFile } = await import('node:fs/promises');
  const base = await mkdtemp(join(tmpdir(), 'difrep-cli-folder-'));
  const root = join(base, 'images'); // the cache goes beside it: one inside would be a class of its own
  for (const [c, v] of [['dark', 20], ['light', 230]] as const) {
    await mkdir(join(root, c), { recursive: true });
    for (const i of [0, 1]) await writeFile(join(root, c, `${i}.png`), encode({ width: 40, height: 36, data: new Uint8Array(40 * 36).fill(v + i), channels: 1, depth: 8 }));
  }
  await writeFile(join(root, 'light', 'bad.png'), new Uint8Array([0x89, 0x50, 0, 0]));
  const ckpt = new URL('../fixtures/adm32-mini.safetensors', import.meta.url).pathname;
  const { stdout, stderr } = await difrep('extract', '--model', 'adm32-mini', '--checkpoint', ckpt, '--dataset', 'folder', '--root', root, '--b', '9', '--pool', '1', '--out', join(base, 'feats'));
  t.match(stderr, /skipped unreadable image .*bad\.png/);
  t.match(stdout, /decoded 5 images at [\d.]+ images\/s; 1 unreadable skipped; classes: dark, light/);
  t.match(stdout, /extracted 4 images/);
  // Two classes: every label is in the top 5, and the line says so rather than boast 100 %.
  const { stdout: knn } = await difrep('knn', '--train', join(base, 'feats'), '--test', join(base, 'feats'), '--b', '9', '--k', '1');
  t.match(knn, /top-5 100\.00% \(any label is in the top 5 of 2 classes\)/);
  await rm(base, { recursive: true });
});

t.test('train --head difeed trains from images with the U-Net live, and --resume continues', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'difrep-difeed-'));
  const ckpt = new URL('../fixtures/adm32-mini.safetensors', import.meta.url).pathname;
  const args = ['train', '--head', 'difeed', '--model', 'adm32-mini', '--checkpoint', ckpt, '--per-class', '1', '--test-per-class', '1',
    '--batch', '10', '--dim', '16', '--heads', '2', '--layers', '1', '--pre-pool', '4', '--out', dir];
  const { stdout } = await difrep(...args, '--epochs', '1');
  t.match(stdout, /epoch 1\/1: loss/);
  t.match(stdout, /difeed \(bottleneck\): top-1/);
  // The blocks in use, defaults resolved: adm32-mini's bottleneck {7, 9} into their mirrors, the head on b9.
  t.match(stdout, /difeed \(bottleneck\): feedback b7 → b3, b9 → b1; the head reads b9/);
  const { stdout: more } = await difrep(...args, '--epochs', '2', '--resume');
  t.notMatch(more, /epoch 1\/2/, 'the finished epoch is not run again');
  t.match(more, /epoch 2\/2: loss/);
  const r = JSON.parse(await readFile(join(dir, 'result.json'), 'utf8'));
  t.equal(r.losses.length, 2);
  t.equal(r.strategy, 'bottleneck');
  t.has(r, { feedbackBlocks: [7, 9], feedbackTargets: [3, 1], featureBlock: 9 });
  // Scored on the test images `extract --split test --per-class 1` picks at the same seed (it took seed + 1).
  await difrep('extract', '--model', 'adm32-mini', '--features', 'pixels', '--split', 'test', '--per-class', '1', '--out', join(dir, 'test-pixels'));
  const cached = await loadCachedFeatures(join(dir, 'test-pixels'), [0], [PIXEL_BLOCK]);
  const ds = await loadFashionMnist('test');
  t.same(Array.from(cached.features.values())[0].data, toModelInput(ds, r.testImages.indices, 32), 'the same test images, in the same order');
  t.same(r.testImages, { dataset: 'fashion-mnist/test/per-class=1', seed: 0, indices: r.testImages.indices });
  // The state records the U-Net it trained on: resuming on other weights (here random ones) is refused.
  const withoutWeights = args.filter((a, i) => a !== '--checkpoint' && args[i - 1] !== '--checkpoint');
  const refused = await difrep(...withoutWeights, '--epochs', '3', '--resume').then(() => null, (e: { stderr: string }) => e);
  t.match(refused?.stderr, /cannot resume .*: it was started with other settings \(unet\.weights "[0-9a-f]{16}" there, "random-weights" now\)/);
  // The released scripts' recipe: plain SGD, one lr for the feedback layers and the head; not a resume of the Adam run.
  const sgdRefused = await difrep(...args, '--epochs', '3', '--resume', '--optimizer', 'sgd').then(() => null, (e: { stderr: string }) => e);
  t.match(sgdRefused?.stderr, /cannot resume .*: it was started with other settings \(feedbackLr 0\.001 there, 0\.01 now/);
  const sgdDir = join(dir, 'sgd');
  await difrep(...args.slice(0, -1), sgdDir, '--epochs', '1', '--optimizer', 'sgd', '--lr', '0.02');
  const s = JSON.parse(await readFile(join(sgdDir, 'result.json'), 'utf8'));
  t.same([s.optimizer, s.lr, s.settings.feedbackLr, s.settings.headLr], ['sgd', 0.02, 0.02, 0.02]);
  await rm(dir, { recursive: true });
});

t.test('extract stopped by SIGTERM (a scheduler\'s stop) leaves no lock behind and exits by that signal', async (t) => {
  const { spawn } = await import('node:child_process');
  const { readdir } = await import('node:fs/promises');
  const dir = await mkdtemp(join(tmpdir(), 'difrep-term-'));
  const ckpt = new URL('../fixtures/adm32-mini.safetensors', import.meta.url).pathname;
  const child = spawn(process.execPath, ['--import', 'tsx', main, 'extract', '--model', 'adm32-mini', '--checkpoint', ckpt, '--split', 'test', '--per-class', '20', '--b', '9', '--chunk', '8', '--batch', '4', '--shard', '0/2', '--out', dir], { stdio: 'ignore' });
  const exited = new Promise<NodeJS.Signals | null>((r) => child.once('exit', (_, signal) => r(signal)));
  const files = () => readdir(dir).catch(() => [] as string[]);
  while (!(await files()).some((f) => f.startsWith('chunk-'))) await new Promise((r) => setTimeout(r, 50));
  t.ok((await files()).includes('.lock-shard-0-of-2'), 'the shard is locked while it runs');
  child.kill('SIGTERM');
  t.equal(await exited, 'SIGTERM', 'ended by the signal, as without the handler');
  t.notOk((await files()).some((f) => f.startsWith('.lock')), 'the lock is gone: a requeued task on another host can take the shard');
  await rm(dir, { recursive: true });
});

t.test('extract killed (SIGKILL) midway and re-run finishes with the same cache as an uninterrupted run', async (t) => {
  const { spawn } = await import('node:child_process');
  const { readdir } = await import('node:fs/promises');
  const dir = await mkdtemp(join(tmpdir(), 'difrep-kill-'));
  const ckpt = new URL('../fixtures/adm32-mini.safetensors', import.meta.url).pathname;
  const args = (out: string) => ['extract', '--model', 'adm32-mini', '--checkpoint', ckpt, '--split', 'test', '--per-class', '4', '--b', '9', '--pool', '2', '--chunk', '8', '--batch', '4', '--out', out];
  await difrep(...args(join(dir, 'whole')));
  const child = spawn(process.execPath, ['--import', 'tsx', main, ...args(join(dir, 'killed'))], { stdio: 'ignore' });
  const chunks = async () => (await readdir(join(dir, 'killed')).catch(() => [] as string[])).filter((f) => /^chunk-\d+-\d+\.safetensors$/.test(f)); // finished chunks, not temp files
  while ((await chunks()).length < 2) await new Promise((r) => setTimeout(r, 50));
  child.kill('SIGKILL');
  await new Promise((r) => child.once('exit', r));
  const before = (await chunks()).length;
  t.ok(before >= 2 && before < 5, `killed with ${before} of 5 chunks written`);
  t.equal((await readdir(join(dir, 'killed'))).filter((f) => f.endsWith('.tmp')).length <= 1, true, 'at most one temp file, never a partial chunk');
  const { stdout } = await difrep(...args(join(dir, 'killed')));
  t.match(stdout, new RegExp(`extracted ${40 - 8 * before} images`), 'only the missing chunks are computed');
  const { readFile: rf } = await import('node:fs/promises');
  for (const f of await chunks()) {
    const a = await rf(join(dir, 'whole', f));
    const b = await rf(join(dir, 'killed', f));
    t.ok(a.equals(b), `${f} byte-identical`);
  }
  await rm(dir, { recursive: true });
});
