import t from 'tap';
import { Adam, StepLR } from '../../src/train/optimizer.ts';
import { maxRelError, randomNd, testEngine, upload } from '../helpers/check.ts';

const e = await testEngine();

// 1000 values: four per invocation (vec4); 1001: one each.
for (const size of [1000, 1001]) t.test(`the Adam kernel follows torch.optim.Adam in float64 over several steps, with weight decay (${size} values)`, async (t) => {
  const p0 = randomNd([size], 1);
  const grads = [2, 3, 4].map((s) => randomNd([size], s, -1e-3, 1e-3));
  const p = upload(e, p0);
  const adam = new Adam(e, new Map([['w', p]]), { lr: 1e-2, betas: [0.9, 0.99], eps: 1e-8, weightDecay: 0.1 });
  const ref = Float64Array.from(p0.data);
  const m = new Float64Array(size);
  const v = new Float64Array(size);
  grads.forEach((g, step) => {
    p.grad = e.keep(upload(e, g));
    adam.step();
    adam.zeroGrad();
    const tt = step + 1;
    for (let i = 0; i < size; i++) {
      const gi = g.data[i] + 0.1 * ref[i];
      m[i] = 0.9 * m[i] + 0.1 * gi;
      v[i] = 0.99 * v[i] + 0.01 * gi * gi;
      const denom = Math.sqrt(v[i]) / Math.sqrt(1 - 0.99 ** tt) + 1e-8;
      ref[i] -= (1e-2 / (1 - 0.9 ** tt)) * (m[i] / denom);
    }
  });
  const err = maxRelError(await p.read(), ref);
  t.ok(err < 1e-6, `${err}`);
  t.equal(adam.steps, 3);
});

t.test('StepLR divides the rate by 10 every 7 epochs', async (t) => {
  const adam = new Adam(e, new Map(), { lr: 1 });
  const sched = new StepLR(adam, 1e-3);
  const got = [0, 6, 7, 13, 14, 27].map((ep) => sched.setEpoch(ep));
  const want = [1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-6];
  got.forEach((g, i) => t.ok(Math.abs(g - want[i]) <= 1e-12 * want[i] + 1e-18, `${g} vs ${want[i]}`));
  t.equal(adam.lr, got[got.length - 1], 'sets the optimizer');
});
