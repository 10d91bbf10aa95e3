// The U-Net forward and backward against dumps made by the real PyTorch code (copied from ../shared/reference;
// unseen-config and conv-resample made here, see test/fixtures/README.md).
import t from 'tap';
import { unetParity } from '../../src/model/parity.ts';
import { openSafetensors } from '../../src/model/checkpoint/safetensors.ts';
import { testEngine } from '../helpers/check.ts';

const e = await testEngine();

for (const [file, blocks] of [['adm32-mini.safetensors', 9], ['adm64.safetensors', 37], ['unseen-config.safetensors', 19], ['conv-resample.safetensors', 9]] as const) {
  t.test(`${file}: x_t, emb, every block 1..${blocks} and the output within 1e-5; input gradients at every block ≤ B and weight gradients within 1e-4`, async (t) => {
    const dump = await openSafetensors(new URL(`../fixtures/${file}`, import.meta.url).pathname);
    const report = await unetParity(e, dump);
    await dump.close();
    const names = report.results.map((c) => c.name);
    t.ok(names.includes('input.x_t') && names.includes('emb') && names.includes('output'));
    t.equal(names.filter((n) => n.startsWith('block.')).length, blocks, 'every block compared');
    for (const c of report.results) {
      const tol = c.name.startsWith('grad.') ? 1e-4 : 1e-5;
      t.ok(c.maxRel <= tol, `${c.name}: ${c.maxRel.toExponential(2)} (≤ ${tol})`);
    }
  });
}
