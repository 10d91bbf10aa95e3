// The U-Net forward and backward against dumps made by the real PyTorch code (copied from ../shared/reference;
// unseen-config and conv-resample made here, see test/fixtures/README.md).
import t from 'tap';
import { unetParity } from '../../src/model/parity.ts';
import { encodeSafetensors, openSafetensors } from '../../src/model/checkpoint/safetensors.ts';
import { testEngine } from '../helpers/check.ts';

const e = await testEngine();

for (const [file, blocks] of [['adm32-mini.safetensors', 9], ['adm64.safetensors', 37], ['unseen-config.safetensors', 19], ['conv-resample.safetensors', 9]] as const) {
  t.test(`${file}: x_t, emb, every block 1..${blocks} and the output within 1e-5; every gradient the dump holds within 1e-4`, async (t) => {
    const dump = await openSafetensors(new URL(`../fixtures/${file}`, import.meta.url).pathname);
    const report = await unetParity(e, dump);
    await dump.close();
    const names = report.results.map((c) => c.name);
    t.ok(names.includes('input.x_t') && names.includes('emb') && names.includes('output'));
    t.equal(names.filter((n) => n.startsWith('block.')).length, blocks, 'every block compared');
    const gradients = (await openSafetensors(new URL(`../fixtures/${file}`, import.meta.url).pathname)).keys().filter((k) => k.startsWith('grad.') && k !== 'grad.R');
    t.equal(names.filter((n) => n.startsWith('grad.')).length, gradients.length, `every one of the dump's ${gradients.length} gradients compared`);
    for (const c of report.results) {
      const tol = c.name.startsWith('grad.') ? 1e-4 : 1e-5;
      t.ok(c.maxRel <= tol, `${c.name}: ${c.maxRel.toExponential(2)} (≤ ${tol})`);
    }
  });
}

t.test('a dump missing what its metadata promises, or holding what no comparison reads, is refused, not passed on the rest', async (t) => {
  const full = await openSafetensors(new URL('../fixtures/adm32-mini.safetensors', import.meta.url).pathname);
  const without = async (drop: (k: string) => boolean, extra: Record<string, { shape: number[]; data: Float32Array }> = {}) => {
    const tensors: Record<string, { shape: number[]; data: Float32Array }> = { ...extra };
    for (const k of full.keys()) if (!drop(k)) tensors[k] = { shape: full.info(k)!.shape, data: await full.read(k) };
    return openSafetensors(encodeSafetensors(tensors, full.metadata));
  };
  // It passed 12/12 without grad.R (its 11 gradients never compared), and 20/20 without block.5, output and emb.
  await t.rejects(unetParity(e, await without((k) => k === 'grad.R')), /not a complete U-Net reference dump: it holds gradients but no grad\.R/);
  await t.rejects(unetParity(e, await without((k) => k === 'block.5' || k === 'output' || k === 'emb')), /its metadata lists 9 blocks, but block\.5 is missing; emb is missing; output is missing/);
  await t.rejects(unetParity(e, await without(() => false, { 'grad.block.3x': { shape: [1], data: new Float32Array(1) } })), /no comparison reads grad\.block\.3x/);
  await full.close();
});
