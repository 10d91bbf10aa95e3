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

t.test('a batch over the storage-binding limit runs in chunks and still matches the dump', async (t) => {
  const { createEngine } = await import('../../src/engine/engine.ts');
  const { withPrefix } = await import('../../src/model/checkpoint/tensor-source.ts');
  const { UNet } = await import('../../src/model/unet.ts');
  const { flagsFromJson } = await import('../../src/model/unet-config.ts');
  const { compareArrays } = await import('../../src/model/parity.ts');
  const dump = await openSafetensors(new URL('../fixtures/adm32-mini.safetensors', import.meta.url).pathname);
  const probe = await UNet.load(e, flagsFromJson(dump.metadata.config), withPrefix(dump, 'param.'));
  const cap = Math.floor(probe.largestActivationBytes() * 1.5); // one image per chunk
  const small = await createEngine({ device: e.device, maxBindingBytes: cap });
  const unet = await UNet.load(small, flagsFromJson(dump.metadata.config), withPrefix(dump, 'param.'));
  const xt = small.tensor(await dump.read('input.x_t'), dump.info('input.x_t')!.shape);
  const taps = probe.plan.blocks.filter((b) => 2 * 4 * b.outChannels * b.size ** 2 <= cap).map((b) => b.b);
  t.ok(taps.length >= 3, `blocks ${taps}`);
  const r = unet.forward(xt, Array.from(await dump.read('input.t')), { taps });
  for (const b of taps) {
    const c = compareArrays(`block.${b}`, await r.taps.get(b)!.read(), await dump.read(`block.${b}`), 1e-5);
    t.ok(c.pass, `${c.name}: ${c.maxRel.toExponential(2)}`);
  }
  const { scale } = await import('../../src/engine/ops/elementwise.ts');
  t.throws(() => scale(small.empty([Math.ceil(cap / 4) + 64], 'huge'), 2), /huge needs a \d+ byte binding, over the largest storage binding/);
  await dump.close();
});
