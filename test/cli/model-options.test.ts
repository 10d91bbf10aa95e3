// loadModel names the weights it loaded: the 16-hex prefix feature caches record and, for results
// files, the whole SHA-256 (the demo's results.json called the prefix "sha256").
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import t from 'tap';
import { loadModel } from '../../src/cli/model-options.ts';
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
