// The demo's options that only its later stages would reject are refused before the model loads
// (found by the heads, they ended minutes of sampling, extraction and sweeps).
import t from 'tap';
import { UsageError } from '../../src/cli/args.ts';
import { demoCommand } from '../../src/cli/demo.ts';

for (const [args, expected] of [
  [['--full', '--train-per-class', '50'], /--full uses all 60,000 training and 10,000 test images: leave out --train-per-class and --test-per-class/],
  [['--head-dim', '10'], /--head-dim 10 does not split into the heads' 4 attention heads: give a multiple of 4/],
  // 5 per class: 50 training images, 40 fit the sweeps' probes, 10 validate them.
  [['--train-per-class', '5', '--batch', '41'], /--batch 41 is more than the 40 images the sweeps fit their probes on \(80 % of 50 training images\): give --batch 40 or less/],
] as const) {
  t.test(args.join(' '), async (t) => {
    const err = await demoCommand([...args, '--out', '/nonexistent/demo']).then(() => null, (e: Error) => e);
    t.type(err, UsageError);
    t.match(err?.message, expected);
  });
}

// The heads' size was found by the Attention head, after minutes of sampling, extraction and
// sweeps, and named the train command's --dim and --layers.
t.test('heads too large are refused before any work, naming the demo\'s options', async (t) => {
  const { mkdtemp, rm } = await import('node:fs/promises');
  const { existsSync } = await import('node:fs');
  const { join } = await import('node:path');
  const { tmpdir } = await import('node:os');
  const dir = await mkdtemp(join(tmpdir(), 'difrep-demo-heads-'));
  const out = join(dir, 'demo');
  const err = await demoCommand(['--head-dim', '4096', '--head-layers', '4', '--out', out]).then(() => null, (e: Error) => e);
  t.type(err, UsageError);
  t.match(err?.message, /^difrep demo: attention head: [\d,]+ parameters .* over the 500,000,000 allowed: give a smaller --head-dim or fewer --head-layers/);
  t.notOk(existsSync(out), 'nothing written');
  await rm(dir, { recursive: true });
});

// It found these only after loading its model: "Error: EEXIST: file already exists, mkdir".
t.test('an --out that cannot be the demo\'s folder is refused before the model loads', async (t) => {
  const { mkdtemp, rm, writeFile } = await import('node:fs/promises');
  const { join } = await import('node:path');
  const { tmpdir } = await import('node:os');
  const dir = await mkdtemp(join(tmpdir(), 'difrep-demo-out-'));
  await writeFile(join(dir, 'a-file'), 'x');
  for (const [out, expected] of [[join(dir, 'a-file'), /^difrep demo: --out .*a-file is a file; it names a folder/], [join(dir, 'a-file', 'demo'), /^difrep demo: --out .*cannot be created: .*a-file is a file, not a folder$/]] as const) {
    const err = await demoCommand(['--out', out]).then(() => null, (e: Error) => e);
    t.type(err, UsageError);
    t.match(err?.message, expected);
  }
  await rm(dir, { recursive: true });
});

t.test('demo feature caches that cannot fit the disk or memory are refused before any work, with their sizes', async (t) => {
  const { checkRoom } = await import('../../src/train/miniature.ts');
  type UNet = import('../../src/model/unet.ts').UNet;
  const { planUNet } = await import('../../src/model/unet-config.ts');
  const { readFile } = await import('node:fs/promises');
  const flags = JSON.parse(await readFile(new URL('../../models/fmnist16.json', import.meta.url), 'utf8'));
  // Sizes only: checkRoom reads the plan (every block's channels and map size).
  const unet = { plan: planUNet(flags) } as UNet;
  const perImage = 4 * 5 * unet.plan.blocks.reduce((n, b) => n + b.outChannels * b.size ** 2, 0);
  t.equal(perImage, 1_351_680, 'fmnist16: 337,920 floats per image over every block at 5 timesteps (measured by an audit from a cache)');
  t.doesNotThrow(() => checkRoom(unet, 1000, 2000, '/out', 10e9), 'the default demo fits');
  t.throws(() => checkRoom(unet, 60_000, 10_000, '/out', 60e9), /training: 60000 images × 5 timesteps × every block's full maps, 81\.1 GB; test: 10000 images, at most [\d.]+ GB — where \/out has 60\.0 GB free/);
  // A rerun: its complete cache of 100 images (135 MB) is reused, so 50 MB free is room enough (it was refused: "0.1 GB > 0.1 GB free").
  t.doesNotThrow(() => checkRoom(unet, 100, 10, '/out', 50e6, 140e6), 'a rerun reusing its caches');
  t.throws(() => checkRoom(unet, 100, 10, '/out', 50e6), /would take 1\d\d MB on disk .* where \/out has 50 MB free, and/, 'sizes under a gigabyte in MB');
  // The test cache counts too: it filled the disk after the sweeps.
  t.throws(() => checkRoom(unet, 10, 5000, '/out', 1e9), /test: 5000 images, at most [\d.]+ GB/);
});
