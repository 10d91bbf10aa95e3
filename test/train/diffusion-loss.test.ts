// The pretraining loss against guided-diffusion's own training_losses (test/fixtures/
// hybrid-loss.safetensors, made by make-hybrid-loss.py from its gaussian_diffusion.py): for a
// learn_sigma model the MSE of ε plus L_vb (the KL for t > 0, the discretised decoder at t = 0,
// both in bits), and its gradient by the model output; without learn_sigma the MSE alone.
import t from 'tap';
import { mean } from '../../src/engine/ops/reduce.ts';
import { square, sub } from '../../src/engine/ops/elementwise.ts';
import { slice } from '../../src/engine/ops/layout.ts';
import { openSafetensors } from '../../src/model/checkpoint/safetensors.ts';
import { linearSchedule, qSample } from '../../src/model/diffusion.ts';
import { diffusionLoss } from '../../src/train/diffusion-loss.ts';
import { maxRelError, testEngine } from '../helpers/check.ts';

const e = await testEngine();
const dump = await openSafetensors(new URL('../fixtures/hybrid-loss.safetensors', import.meta.url).pathname);
t.teardown(() => dump.close());
const read = async (k: string) => ({ data: Float32Array.from(await dump.read(k)), shape: dump.info(k)!.shape });
const schedule = linearSchedule(1000);
const ts = Array.from(await dump.read('t'), Number);
const x0 = await read('x0');

async function batch() {
  const noise = await read('noise');
  const x0t = e.tensor(x0.data, x0.shape, 'x0');
  const noiseT = e.tensor(noise.data, noise.shape, 'noise');
  return { x0: x0t, x0Data: x0.data, xt: qSample(e, schedule, x0t, ts, noiseT), noise: noiseT, t: ts };
}

t.test('learn_sigma: MSE + L_vb and its gradient match guided-diffusion at t = 0 (decoder), 1, 150, 600 and 999 (KL)', async (t) => {
  t.same(ts, [0, 1, 150, 999, 0, 600], 'the fixture covers both terms');
  const out = await read('output');
  const output = e.tensor(out.data, out.shape, 'output');
  output.requiresGrad = true;
  const loss = diffusionLoss(schedule, await batch(), output);
  e.tape.backward(loss);
  const [want] = await dump.read('loss');
  const [got] = await loss.read();
  t.ok(Math.abs(got - want) / want < 1e-5, `loss ${got} vs PyTorch ${want}`);
  const err = maxRelError(await output.grad!.read(), Float32Array.from(await dump.read('grad.output')));
  t.ok(err < 1e-4, `d loss / d output: max rel err ${err.toExponential(2)}`);
  // The vb term is what moves v: without it the gradient of the variance channels would be 0.
  const C = x0.shape[1];
  const gv = await slice(output.grad!, [0, C], [ts.length, 2 * C]).read();
  t.ok(gv.some((g) => g !== 0), 'the variance channels get a gradient');
});

t.test('without learn_sigma the loss is the MSE of ε alone', async (t) => {
  const out = await read('output');
  const C = x0.shape[1];
  const epsHat = slice(e.tensor(out.data, out.shape), [0, 0], [ts.length, C]);
  const b = await batch();
  const [got] = await diffusionLoss(schedule, b, epsHat).read();
  const mse = Array.from(await dump.read('mse'));
  const want = mse.reduce((a, v) => a + v, 0) / mse.length;
  t.ok(Math.abs(got - want) / want < 1e-5, `${got} vs PyTorch's mean of mse ${want}`);
  t.equal(got, (await mean(square(sub(epsHat, b.noise))).read())[0]);
});
