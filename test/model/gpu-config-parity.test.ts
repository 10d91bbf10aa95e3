// The choices a GPU adapter gets (GEMM presets 'gpu', no subgroup GEMM, no Winograd, a workgroup
// per row, the fused attention backward, split-K weight gradients), made here on lavapipe by an
// engine told its adapter is an NVIDIA GPU, against the PyTorch dumps: no test machine has a GPU,
// and the tests otherwise reach those kernels one at a time through tunings.
import t from 'tap';
import { createEngine } from '../../src/engine/engine.ts';
import * as ops from '../../src/engine/ops/index.ts';
import { openSafetensors } from '../../src/model/checkpoint/safetensors.ts';
import { unetParity } from '../../src/model/parity.ts';
import { headParity } from '../../src/train/parity.ts';
import { recordKernelKeys, testEngine } from '../helpers/check.ts';

const device = (await testEngine()).device;
// wrapDevice reads only the adapter's info; the description must name no CPU adapter.
const info = { vendor: 'nvidia', architecture: 'ampere', device: 'test', description: 'NVIDIA (as a GPU adapter would be described)', subgroupMinSize: 32, subgroupMaxSize: 32 };
const gpu = await createEngine({ device, adapter: { info } as unknown as GPUAdapter });
const ran = recordKernelKeys(gpu);
t.teardown(() => gpu.dispose());

t.test('the engine makes a GPU adapter\'s choices', async (t) => {
  t.equal(gpu.adapterClass, 'nvidia');
  t.equal(gpu.gemmPresets, 'gpu');
  t.notOk(gpu.cpuAdapter);
  t.notOk(gpu.subgroupMatmul);
});

t.test('adm64 with a GPU\'s kernels: every block within 1e-5, every gradient within 1e-4 of PyTorch', async (t) => {
  const dump = await openSafetensors(new URL('../fixtures/adm64.safetensors', import.meta.url).pathname);
  const report = await unetParity(gpu, dump);
  await dump.close();
  t.ok(report.results.length > 37);
  for (const c of report.results) {
    const tol = c.name.startsWith('grad.') ? 1e-4 : 1e-5;
    t.ok(c.maxRel <= tol, `${c.name}: ${c.maxRel.toExponential(2)} (≤ ${tol})`);
  }
});

for (const file of ['attention-head', 'difeed']) {
  t.test(`${file} with a GPU's kernels: forward within 1e-5, gradients and the Adam step within 1e-3 of PyTorch`, async (t) => {
    const dump = await openSafetensors(new URL(`../fixtures/${file}.safetensors`, import.meta.url).pathname);
    const report = await headParity(gpu, dump);
    await dump.close();
    for (const c of report.results) {
      const tol = c.name.startsWith('grad.') || c.name.startsWith('adam1.') ? 1e-3 : 1e-5;
      t.ok(c.maxRel <= tol, `${c.name}: ${c.maxRel.toExponential(2)}${c.note ? ` (${c.note})` : ''}`);
    }
  });
}

t.test('what ran: the GPU tiles, row kernels and the fused attention backward, never a lavapipe kernel', async (t) => {
  const keys = [...ran];
  t.notOk(keys.some((k) => k.startsWith('matmulSubgroup') || k.startsWith('conv2dSubgroup') || k.startsWith('winograd')), 'no subgroup GEMM or Winograd kernel');
  t.ok(keys.some((k) => /^matmul\..*\.4x4\.k16$/.test(k)), 'matmul on 4×4 outputs a thread');
  t.ok(keys.some((k) => k.startsWith('conv2dWeightGrad')), 'the conv weight gradient');
  t.ok(keys.some((k) => k.startsWith('attentionBackward')), 'the fused attention backward');
  t.ok(keys.some((k) => k.endsWith('.subgroup') || k.endsWith('.workgroup')), 'a workgroup per row');
  t.notOk(keys.some((k) => k.endsWith('.storeLoop')), 'GEMM stores written out (a CPU adapter\'s store loop nowhere)');
});

t.test('a CPU adapter\'s register-tiled GEMMs store through one loop', async (t) => {
  const cpu = await createEngine({ device, tuning: { matmulSubgroup: { enabled: 0 } } });
  if (!cpu.cpuAdapter) { t.comment('not on a CPU adapter'); return; }
  const keys: string[] = [];
  const dispatch = cpu.dispatch.bind(cpu);
  cpu.dispatch = (d) => (keys.push(d.kernel.key), dispatch(d));
  const a = cpu.tensor(new Float32Array(64 * 64).fill(1), [64, 64]);
  await ops.matmul(a, a).read();
  t.ok(keys.some((k) => /^matmul\..*\.storeLoop$/.test(k)), keys.join(', '));
  cpu.dispose();
});
