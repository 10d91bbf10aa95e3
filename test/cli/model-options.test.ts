// loadModel names the weights it loaded: the 16-hex prefix feature caches record and, for results
// files, the whole SHA-256 (the demo's results.json called the prefix "sha256").
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import t from 'tap';
import { loadModel, resolveFlags } from '../../src/cli/model-options.ts';
import { planUNet } from '../../src/model/unet-config.ts';
import { testEngine } from '../helpers/check.ts';

const e = await testEngine();

t.test('loadModel gives the checkpoint\'s whole SHA-256 and its 16-hex prefix', async (t) => {
  const path = new URL('../../models/fmnist16.safetensors', import.meta.url).pathname;
  const expected = createHash('sha256').update(await readFile(path)).digest('hex');
  const { unet, hash, sha256 } = await loadModel(e, new URL('../../models/fmnist16.json', import.meta.url).pathname, path);
  t.equal(sha256, expected);
  t.equal(hash, expected.slice(0, 16));
  for (const p of unet.parameters().values()) p.dispose();
});

// Heads and attention order change no tensor shape: weights of 4 heads loaded into a 2-head model
// without a word. A file that records its config is checked (UNet.load); one that does not is named.
t.test('loadModel says when a checkpoint records no config, naming the head settings it cannot check', async (t) => {
  const lines: string[] = [];
  const error = console.error;
  console.error = (line: string) => void lines.push(line);
  try {
    const mini = await loadModel(e, 'adm32-mini', new URL('../fixtures/adm32-mini.pt', import.meta.url).pathname);
    for (const p of mini.unet.parameters().values()) p.dispose();
    t.match(lines.join('\n'), /adm32-mini\.pt records no config, so its attention heads are as --model adm32-mini says, unchecked \(num_heads \d+, num_head_channels -?\d+, num_heads_upsample -?\d+, use_new_attention_order (true|false)\)/);
    lines.length = 0;
    const own = await loadModel(e, new URL('../../models/fmnist16.json', import.meta.url).pathname, new URL('../../models/fmnist16.safetensors', import.meta.url).pathname);
    for (const p of own.unet.parameters().values()) p.dispose();
    t.notMatch(lines.join('\n'), /records no config/, 'a file with its config says nothing of it');
  } finally {
    console.error = error;
  }
});

t.test('--model names that Object.prototype has are not presets', async (t) => {
  for (const name of ['constructor', 'toString', '__proto__']) {
    await t.rejects(resolveFlags(name), new RegExp(`--model ${name}: not a preset \\(`));
  }
});

// extract recorded the flags of one read of a --model file and loaded the network from a second
// read: a config edited in between (num_head_channels, which changes no weight shape) gave
// features of another network under the recorded config.
t.test('loadModel with flags already resolved builds the network from them, not from a second read of --model', async (t) => {
  const { mkdtemp, rm, writeFile } = await import('node:fs/promises');
  const { join } = await import('node:path');
  const { tmpdir } = await import('node:os');
  const dir = await mkdtemp(join(tmpdir(), 'difrep-model-'));
  const config = join(dir, 'cfg.json');
  await writeFile(config, await readFile(new URL('../../models/fmnist16.json', import.meta.url).pathname));
  const flags = await resolveFlags(config);
  await writeFile(config, 'edited meanwhile: not JSON');
  const { unet } = await loadModel(e, config, new URL('../../models/fmnist16.safetensors', import.meta.url).pathname, { flags });
  t.same(unet.plan.flags, planUNet(flags).flags, 'the network of the recorded flags');
  for (const p of unet.parameters().values()) p.dispose();
  await rm(dir, { recursive: true });
});
