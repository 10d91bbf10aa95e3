import t from 'tap';
import { createEngine, ops, type Tensor } from '../../src/index.ts';
import { Adam, OptimizerGroups, Sgd, StepLR } from '../../src/train/optimizer.ts';
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

// torch.optim.Adam passes 1 − β2 from Python's float64 (f32(0.001)); the kernel formed 1 − β2 in
// f32 (0.0009999871), so v was 1.3e-5 relatively off after a step. Expected: PyTorch's float32
// arithmetic, v = f32(f32(0.001)·g)·g from v = 0, and m = f32(0.1)·g.
t.test('Adam takes 1 − β1 and 1 − β2 from float64, as torch.optim.Adam does (its first moments to f32 rounding)', async (t) => {
  const g = Float32Array.from([0.75, -1.5, 3, 0.1]);
  const p = e.tensor([1, 2, 3, 4], [4], 'w');
  const adam = new Adam(e, new Map([['w', p]]), { lr: 1e-3 });
  p.grad = e.keep(e.tensor(g, [4]));
  adam.step();
  const state = adam.state();
  const [m, v] = [await state.get('exp_avg.w')!.read(), await state.get('exp_avg_sq.w')!.read()];
  const f = Math.fround;
  const wantM = Array.from(g, (x) => f(f(0.1) * x));
  const wantV = Array.from(g, (x) => f(f(f(0.001) * x) * x));
  const rel = (a: ArrayLike<number>, b: number[]) => Math.max(...b.map((w, i) => Math.abs(a[i] - w) / Math.abs(w)));
  t.ok(rel(m, wantM) <= 1.2e-7, `exp_avg ${Array.from(m)} vs ${wantM}`);
  t.ok(rel(v, wantV) <= 1.2e-7, `exp_avg_sq ${Array.from(v)} vs ${wantV}: ${rel(v, wantV).toExponential(2)}`);
  adam.dispose();
  p.dispose();
});

// torch.optim.Adam counts steps per parameter (state['step']), a parameter without a gradient
// keeping its count; one count for all gave b the bias correction of step 3 at its second step
// (7 % off torch's move). Expected: torch's update in float64, b's steps counted alone.
t.test('Adam counts each parameter\'s own steps: one without a gradient keeps its bias correction, and a saved state keeps the counts', async (t) => {
  const reference = (p0: number[], grads: (number[] | null)[], lr: number) => {
    const p = [...p0];
    const m = p.map(() => 0);
    const v = p.map(() => 0);
    let steps = 0;
    for (const g of grads) {
      if (!g) continue;
      steps++;
      p.forEach((_, i) => {
        m[i] = 0.9 * m[i] + 0.1 * g[i];
        v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i];
        p[i] -= (lr / (1 - 0.9 ** steps)) * (m[i] / (Math.sqrt(v[i]) / Math.sqrt(1 - 0.999 ** steps) + 1e-8));
      });
    }
    return p;
  };
  const gradsA = [[0.5, -1], [0.25, 2], [-1, 0.5]];
  const gradsB = [[1, 3], null, [-2, 0.5]];
  const run = (adam: Adam, a: Tensor, b: Tensor, from: number, to: number) => {
    for (let s = from; s < to; s++) {
      a.grad = e.keep(e.tensor(Float32Array.from(gradsA[s]), [2]));
      if (gradsB[s]) b.grad = e.keep(e.tensor(Float32Array.from(gradsB[s]!), [2]));
      adam.step();
      adam.zeroGrad();
    }
  };
  const make = (a0: ArrayLike<number> = [1, 2], b0: ArrayLike<number> = [3, 4]) => {
    const [a, b] = [e.keep(e.tensor(Float32Array.from(a0), [2], 'a')), e.keep(e.tensor(Float32Array.from(b0), [2], 'b'))];
    return { a, b, adam: new Adam(e, new Map([['a', a], ['b', b]]), { lr: 0.1 }) };
  };
  const whole = make();
  run(whole.adam, whole.a, whole.b, 0, 3);
  const rel = (got: ArrayLike<number>, want: number[]) => Math.max(...want.map((w, i) => Math.abs(got[i] - w) / Math.abs(w)));
  t.ok(rel(await whole.b.read(), reference([3, 4], gradsB, 0.1)) < 1e-6, `b: ${Array.from(await whole.b.read())} vs ${reference([3, 4], gradsB, 0.1)}`);
  t.ok(rel(await whole.a.read(), reference([1, 2], gradsA, 0.1)) < 1e-6, 'a, with a gradient at every step');

  // Saved after step 2 (b: 1 step) and resumed: the same as the run taken whole.
  const first = make();
  run(first.adam, first.a, first.b, 0, 2);
  const saved = new Map<string, Float32Array>();
  for (const [k, v] of first.adam.state()) saved.set(k, await v.read());
  t.same([saved.get('step.a')![0], saved.get('step.b')![0]], [2, 1], 'the counts saved');
  const resumed = make(await first.a.read(), await first.b.read());
  resumed.adam.loadState(2, saved);
  run(resumed.adam, resumed.a, resumed.b, 2, 3);
  t.same(Array.from(await resumed.b.read()), Array.from(await whole.b.read()), 'resumed = whole');
  // A state saved before the counts were: every parameter with moments took every step.
  const legacy = make();
  legacy.adam.loadState(2, new Map([...saved].filter(([k]) => !k.startsWith('step.'))));
  t.same([(await legacy.adam.state().get('step.b')!.read())[0]], [2]);
  t.throws(() => make().adam.loadState(2, new Map([...saved, ['step.b', Float32Array.of(3)]])), { name: 'OptimizerStateError', message: 'Adam step of b is 3; it counts the parameter\'s steps: an integer from 1 to the 2 steps taken' });
  t.throws(() => make().adam.loadState(2, new Map([...saved, ['step.b', Float32Array.of(1.5)]])), { name: 'OptimizerStateError' });
});

t.test('optimizers refuse hyper-parameters torch.optim refuses, naming them', async (t) => {
  const p = new Map([['w', e.keep(e.tensor([1], [1], 'w'))]]);
  t.throws(() => new Adam(e, p, { lr: -1 }), { name: 'RangeError', message: 'Adam: lr must be ≥ 0, got -1' });
  t.throws(() => new Adam(e, p, { lr: 1e-3, betas: [1.5, 0.999] }), { message: 'Adam: betas[0] must be in [0, 1), got 1.5' });
  t.throws(() => new Adam(e, p, { lr: 1e-3, betas: [0.9, 1] }), { message: 'Adam: betas[1] must be in [0, 1), got 1' });
  t.throws(() => new Adam(e, p, { lr: 1e-3, eps: -1 }), { message: 'Adam: eps must be ≥ 0, got -1' });
  t.throws(() => new Adam(e, p, { lr: NaN }), { message: 'Adam: lr must be ≥ 0, got NaN' });
  t.throws(() => new Adam(e, p, { lr: 1e-3, weightDecay: -0.1 }), { message: 'Adam: weightDecay must be ≥ 0, got -0.1' });
  t.throws(() => new Sgd(e, p, -0.5), { message: 'Sgd: lr must be ≥ 0, got -0.5' });
  // A step size of 0 made the rate NaN, refused by the kernel as "uniform stepSize = NaN".
  t.throws(() => new StepLR(new Adam(e, p, { lr: 1 }), 1e-3, 0), { message: 'StepLR: stepSize must be an integer ≥ 1, got 0' });
  t.throws(() => new StepLR(new Adam(e, p, { lr: 1 }), 1e-3, 2.5), { message: 'StepLR: stepSize must be an integer ≥ 1, got 2.5' });
});

t.test('StepLR divides the rate by 10 every 7 epochs', async (t) => {
  const adam = new Adam(e, new Map(), { lr: 1 });
  const sched = new StepLR(adam, 1e-3);
  const got = [0, 6, 7, 13, 14, 27].map((ep) => sched.setEpoch(ep));
  const want = [1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-6];
  got.forEach((g, i) => t.ok(Math.abs(g - want[i]) <= 1e-12 * want[i] + 1e-18, `${g} vs ${want[i]}`));
  t.equal(adam.lr, got[got.length - 1], 'sets the optimizer');
});

t.test('OptimizerGroups: a saved state goes back to its groups; one that fits none is refused whole', async (t) => {
  const param = (v: number) => e.keep(e.tensor(Float32Array.from([v, v]), [2], `p${v}`));
  const make = () => {
    const [a, b] = [param(1), param(2)];
    return { a, b, opt: new OptimizerGroups([new Adam(e, new Map([['a', a]]), { lr: 0.1 }), new Adam(e, new Map([['b', b]]), { lr: 0.01 })]) };
  };
  const src = make();
  src.a.grad = e.keep(e.tensor(Float32Array.from([1, -1]), [2]));
  src.b.grad = e.keep(e.tensor(Float32Array.from([2, 4]), [2]));
  src.opt.step();
  const saved = new Map<string, Float32Array>();
  for (const [k, v] of src.opt.state()) saved.set(k, await v.read());
  t.same([...saved.keys()].sort(), ['group0.exp_avg.a', 'group0.exp_avg_sq.a', 'group0.step.a', 'group1.exp_avg.b', 'group1.exp_avg_sq.b', 'group1.step.b']);

  const dst = make();
  dst.opt.loadState(1, saved);
  const restored = new Map<string, number[]>();
  for (const [k, v] of dst.opt.state()) restored.set(k, Array.from(await v.read()));
  // exp_avg = (1 − β1)·g, exp_avg_sq = (1 − β2)·g² after one step (torch.optim.Adam's update).
  t.same(restored.get('group1.exp_avg.b')!.map((x) => +x.toFixed(6)), [0.2, 0.4]);
  t.same(restored.get('group1.exp_avg_sq.b')!.map((x) => +x.toFixed(6)), [0.004, 0.016]);
  t.equal(dst.opt.steps, 1);

  const refused = (state: Map<string, Float32Array>, message: RegExp) => {
    const fresh = make();
    t.throws(() => fresh.opt.loadState(7, state), { name: 'OptimizerStateError', message });
    t.equal(fresh.opt.steps, 0, 'no group loaded a part of it');
    t.equal(fresh.opt.state().size, 0, 'no moments created');
  };
  refused(new Map([...saved, ['group2.exp_avg.a', new Float32Array(2)]]), /state group2\.exp_avg\.a belongs to none of the 2 optimizer groups/);
  refused(new Map([...saved, ['group1.exp_avg.b', new Float32Array(3)]]), /Adam exp_avg of b holds 3 values, its parameter \[2\] 2/);
  refused(new Map([...saved, ['group1.exp_avg.a', new Float32Array(2)]]), /Adam state for no parameter of this model: exp_avg\.a/);
});

// SGD copies the new values into the parameter: a caller's buffer without COPY_DST (fromBuffer asks
// only STORAGE and COPY_SRC) failed WebGPU's validation, and with it the engine for good.
t.test('SGD on a caller\'s buffer without COPY_DST is refused, naming the usage, and the engine works on', async (t) => {
  const appBuffer = e.device.createBuffer({ size: 16, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC, label: 'app weights', mappedAtCreation: true });
  new Float32Array(appBuffer.getMappedRange()).set([1, 2, 3, 4]);
  appBuffer.unmap();
  const p = e.fromBuffer(appBuffer, [4]);
  const sgd = new Sgd(e, new Map([['w', p]]), 0.5);
  e.tape.backward(ops.sum(ops.scale(p, 3)));
  t.throws(() => sgd.step(), /copy to app weights: the buffer was not created with GPUBufferUsage\.COPY_DST/);
  t.same(Array.from(await p.read()), [1, 2, 3, 4], 'unchanged');
  sgd.zeroGrad();
  p.dispose();
  appBuffer.destroy();
});

// Sgd wrote its step back through its own engine's copies: on another engine's parameter (two
// engines of one app device) the step left the weights as they were, without a word.
t.test('an optimizer made on another engine than its parameters is refused, naming the parameter', async (t) => {
  const other = await createEngine({ device: e.device });
  const w = other.tensor([1, 2, 3, 4], [4], 'w');
  t.throws(() => new Sgd(e, new Map([['w', w]]), 0.1), /Sgd: tensor "w" belongs to another Engine/);
  t.throws(() => new Adam(e, new Map([['w', w]]), { lr: 0.1 }), /Adam: tensor "w" belongs to another Engine/);
  w.dispose();
  await other.dispose();
});

// A library user's loop that steps between the forward and its backward: the gradient came from the
// stepped weights (PyTorch raises "modified by an inplace operation", for SGD and Adam alike).
t.test('backward after an optimizer step that changed what the forward saved is refused', async (t) => {
  for (const make of [(p: Map<string, Tensor>) => new Sgd(e, p, 0.1), (p: Map<string, Tensor>) => new Adam(e, p, { lr: 0.1 })]) {
    const w = e.tensor([1, 2, 3], [3], 'w');
    const opt = make(new Map([['w', w]]));
    const x = e.tensor([4, 5, 6], [3], 'x');
    e.tape.backward(ops.sum(ops.mul(ops.mul(w, w), x)));
    const loss = ops.sum(ops.mul(ops.mul(w, w), x));
    opt.step();
    t.throws(() => e.tape.backward(loss), /was written in place after the forward/, opt.constructor.name);
    opt.zeroGrad();
    opt.dispose();
    w.dispose();
    x.dispose();
  }
});

// Disposing an optimizer gives its parameters back their requiresGrad, but only once no other
// optimizer holds them: a new learning-rate phase built before the old one was disposed lost w's
// gradient, and its step left w as it was. Expected, by hand: loss Σ(w·x) + h, SGD lr 0.01 moves w
// by −0.01·x and h by −0.01.
t.test('an optimizer disposed while another over the same parameters trains leaves them requiring gradients', async (t) => {
  const w = e.tensor([1, 2, 3], [3], 'w');
  const h = e.tensor([0.5], [1], 'h');
  const x = e.tensor([4, 5, 6], [3], 'x');
  const first = new Sgd(e, new Map([['w', w]]), 0.01);
  const second = new Sgd(e, new Map([['w', w], ['h', h]]), 0.01);
  first.dispose();
  first.dispose();
  t.ok(w.requiresGrad && h.requiresGrad, 'both still require gradients');
  e.tape.backward(ops.add(ops.sum(ops.mul(w, x)), ops.sum(h)));
  second.step();
  second.zeroGrad();
  t.ok(maxRelError(await w.read(), [0.96, 1.95, 2.94]) < 1e-6, 'w moved by −lr·x');
  t.ok(maxRelError(await h.read(), [0.49]) < 1e-6, 'h moved by −lr');
  second.dispose();
  t.notOk(w.requiresGrad || h.requiresGrad, 'the last dispose gives back the flags they had');
  for (const v of [w, h, x]) v.dispose();
});
