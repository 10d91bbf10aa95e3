// trainStep over a batch in parts (gradient accumulation): the parts' gradients add up to the
// whole loss's, the loss is their sum, the engine waits for the GPU between parts and before the
// update, and a part that fails leaves nothing behind (no recorded nodes, no gradient).
import t from 'tap';
import { createEngine } from '../../src/engine/engine.ts';
import { add, mul } from '../../src/engine/ops/elementwise.ts';
import { sum } from '../../src/engine/ops/reduce.ts';
import type { Tensor } from '../../src/engine/tensor.ts';
import { Adam, Sgd } from '../../src/train/optimizer.ts';
import { trainStep } from '../../src/train/train-step.ts';
import { testEngine } from '../helpers/check.ts';

const e = await testEngine();

t.test('two parts step as their sum: SGD moves w by lr·(a + b), the loss read is a·w + b·w', async (t) => {
  const w = e.tensor([1, -2, 3], [3]);
  w.requiresGrad = true;
  const [a, b] = [e.tensor([0.5, 1, -1], [3]), e.tensor([2, -3, 0.25], [3])];
  const loss = await trainStep(e, new Sgd(e, new Map([['w', w]]), 0.1), [() => sum(mul(w, a)), () => sum(mul(w, b))], true);
  // a·w = 0.5 − 2 − 3 = −4.5; b·w = 2 + 6 + 0.75 = 8.75.
  t.equal(loss, 4.25);
  t.same(Array.from(await w.read()).map((v) => +v.toFixed(6)), [0.75, -1.8, 3.075]);
  t.equal(w.grad, null, 'the gradient is cleared after the step');
});

t.test('the update waits for the GPU after the last part: parts and update that fit the backlog apart train', async (t) => {
  // 100 parameters: a part records ~500 commands (forward and backward), Adam's first step ~300.
  // With 700 allowed in flight, the second part and the update back to back (~800) were refused
  // inside Adam's step, with the parameters half updated.
  const small = await createEngine({ maxCommandsInFlight: 700 });
  t.teardown(() => small.dispose());
  const params = new Map(Array.from({ length: 100 }, (_, i) => {
    const p = small.tensor([i, 1, 2, 3], [4]);
    p.requiresGrad = true;
    return [`p${i}`, p] as [string, Tensor];
  }));
  const c = small.tensor([1, 2, 3, 4], [4]);
  const part = () => [...params.values()].map((p) => sum(mul(p, c))).reduce((x, y) => add(x, y));
  await trainStep(small, new Adam(small, params, { lr: 0.1 }), [part, part]);
  // Adam's first step moves each weight by lr·g/(|g| + ε) = 0.1 (every gradient 2c > 0).
  t.same(Array.from(await params.get('p7')!.read()).map((v) => +v.toFixed(5)), [6.9, 0.9, 1.9, 2.9]);
});

t.test('a part that throws leaves no recorded nodes, no gradient and no tensor behind', async (t) => {
  const w = e.tensor([1, 2], [2]);
  w.requiresGrad = true;
  const live = e.memoryStats().liveBytes;
  const failing = () => {
    mul(w, w); // recorded before the failure
    throw new Error('part 2 failed');
  };
  await t.rejects(trainStep(e, new Sgd(e, new Map([['w', w]]), 0.1), [() => sum(mul(w, w)), failing]), /part 2 failed/);
  t.equal(e.tape.length, 0, 'the tape is cleared');
  t.equal(w.grad, null, 'part 1 left no gradient for the next step');
  t.equal(e.memoryStats().liveBytes, live, 'nothing the parts made stays alive');
  t.same(Array.from(await w.read()), [1, 2], 'no update');
});

// Two steps of one optimizer at once added both gradients into one .grad between the first
// step's backward and its update: the first update took their sum, the second found none, and
// both resolved. Expected: the second is refused, and the first is the single step by hand,
// w − lr·a.
t.test('a second step of an optimizer whose step is still running is refused; the first is unchanged', async (t) => {
  const w = e.tensor([1, -2, 3], [3]);
  const a = e.tensor([0.5, 1, -1], [3]);
  const sgd = new Sgd(e, new Map([['w', w]]), 0.1);
  const first = trainStep(e, sgd, () => sum(mul(w, a)));
  await t.rejects(trainStep(e, sgd, () => sum(mul(w, a))), /a step of this optimizer is still running; await it before the next/);
  await first;
  t.same(Array.from(await w.read()).map((v) => +v.toFixed(6)), [0.95, -2.1, 3.1]);
  await trainStep(e, sgd, () => sum(mul(w, a)));
  t.same(Array.from(await w.read()).map((v) => +v.toFixed(6)), [0.9, -2.2, 3.2], 'the next step, awaited, runs');
  sgd.dispose();
});
