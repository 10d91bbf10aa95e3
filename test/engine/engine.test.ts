import { execFileSync } from 'node:child_process';
import t from 'tap';
import { createEngine, GpuError, ops, requestDevice } from '../../src/index.ts';
import { BufferPool, sizeClass } from '../../src/engine/buffer-pool.ts';
import { countBindGroups, testEngine } from '../helpers/check.ts';
import { uniformLayout } from '../../kernels/uniform-layout.ts';

const e = await testEngine();

t.test('with no Vulkan driver every entry point fails with one message naming the setup command', async (t) => {
  const child = new URL('./children/no-adapter.ts', import.meta.url).pathname;
  const out = execFileSync(process.execPath, ['--import', 'tsx', child], {
    env: { ...process.env, VK_ICD_FILENAMES: '/nonexistent/icd.json', VK_DRIVER_FILES: '/nonexistent/icd.json' },
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  t.match(out, /NoAdapterError: No WebGPU adapter: .*npm run setup/);
});

t.test('size classes waste at most a third and are monotone', async (t) => {
  let prev = 0;
  for (const b of [1, 255, 256, 4096, 4097, 6000, 1 << 20, (1 << 20) + 1, 100_000_000]) {
    const c = sizeClass(b);
    t.ok(c >= b && c <= Math.max(256, b * 1.5 + 256) && c >= prev, `${b} -> ${c}`);
    prev = c;
  }
});

// Sizes whose class would pass maxBufferSize get a buffer of their own size: on lavapipe (4 GiB − 1)
// every tensor over 3 GiB rounded up to 4 GiB and was refused though it fits.
t.test('a buffer over the last size class that fits maxBufferSize gets its exact size; one over the limit is refused', async (t) => {
  const pool = new BufferPool((d) => e.device.createBuffer(d), 3000);
  const b = pool.acquire(2900, 'big');
  t.equal(b.size, 2900, 'class 3072 > 3000: the exact size');
  t.equal(pool.acquire(2500, 'classed').size, 2560, 'below it: its class');
  t.throws(() => pool.acquire(3001, 'too big'), /too big: a buffer of 3001 bytes exceeds this device's maxBufferSize \(3000\)/);
  pool.release(b);
  t.equal(pool.acquire(2900, 'again').size, 2900, 'and is pooled under that size');
  pool.destroyAll();
});

// The earliest-made free buffer first: which buffer an acquire gets then depends on the sequence of
// acquires and releases alone, so a loop's steps get the same buffers in the same places (and reuse
// their bind groups) whatever order earlier tensors were freed in. Buffers here are stand-ins.
t.test('the buffer pool hands out the earliest-made free buffer of a class', async (t) => {
  let made = 0;
  const pool = new BufferPool((d) => ({ size: d.size, label: d.label, name: `b${made++}`, destroy() {} }) as unknown as GPUBuffer, 1 << 20);
  const name = (b: GPUBuffer) => (b as unknown as { name: string }).name;
  const [b0, b1, b2] = [0, 1, 2].map(() => pool.acquire(1000, 'x'));
  for (const b of [b0, b2, b1]) pool.release(b);
  t.same([0, 1, 2].map(() => name(pool.acquire(1000, 'x'))), ['b0', 'b1', 'b2'], 'released b0, b2, b1: handed out b0, b1, b2');
  // One step of a loop (two temporaries, one freed before the other is made), run after two
  // different release orders: the same buffers in the same places.
  const step = () => {
    const a = pool.acquire(1000, 'a');
    const b = pool.acquire(1000, 'b');
    pool.release(a);
    const c = pool.acquire(1000, 'c');
    pool.release(c);
    pool.release(b);
    return [a, b, c].map(name).join(' ');
  };
  for (const b of [b0, b1, b2]) pool.release(b);
  const first = step();
  for (let i = 0; i < 3; i++) pool.acquire(1000, 'x');
  for (const b of [b2, b0, b1]) pool.release(b);
  t.equal(step(), first, `both times ${first}`);
});

t.test('the buffer pool reuses a freed buffer of the same class', async (t) => {
  const before = e.memoryStats();
  const a = e.empty([1000], 'a');
  a.dispose();
  const b = e.empty([1000], 'b');
  const after = e.memoryStats();
  t.equal(after.reuses, before.reuses + 1);
  b.dispose();
});

t.test('a dispatch over the same buffers reuses its bind group; one over a caller\'s buffer makes its own', async (t) => {
  const device = e.device;
  const made = countBindGroups(device, t.teardown);
  const w = e.tensor([10, 20, 30, 40], [4]);
  // (x·w + x)·2, worked by hand.
  const expected = [22, 84, 186, 328];
  const run = async (x: ReturnType<typeof e.tensor>) => {
    const y = e.tidy(() => ops.scale(ops.add(ops.mul(x, w), x), 2));
    const values = Array.from(await y.read());
    y.dispose();
    return values;
  };
  const x = e.tensor([1, 2, 3, 4], [4]);
  t.same(await run(x), expected);
  const first = made();
  t.ok(first >= 3, `the first run makes its bind groups (${first})`);
  t.same(await run(x), expected);
  t.equal(made(), first, 'the second run reuses them all');
  t.ok(e.memoryStats().bindGroups >= 3, 'and they are counted');

  const caller = device.createBuffer({ size: 16, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
  device.queue.writeBuffer(caller, 0, new Float32Array([1, 2, 3, 4]));
  const fromCaller = e.fromBuffer(caller, [4], 'caller');
  t.same(await run(fromCaller), expected);
  const withCaller = made();
  t.same(await run(fromCaller), expected);
  t.ok(made() - withCaller >= 2, 'the ops reading the caller\'s buffer make theirs again: the engine keeps none of its buffers alive');

  e.releasePooled();
  t.equal(e.memoryStats().bindGroups, 0, 'releasePooled drops them with the buffers it destroys');
  t.same(await run(x), expected, 'and the next run is right');
  fromCaller.dispose();
  caller.destroy();
  x.dispose();
  w.dispose();
});

// settle() submits the iteration's batch, so the next one's uniforms take the same arena slots: a
// loop of 3 dispatches an iteration (not a multiple of the 64 a batch holds) reused none of its
// bind groups without a read in every iteration.
t.test('a loop that awaits settle() in every iteration reuses its bind groups', async (t) => {
  const device = e.device;
  const made = countBindGroups(device, t.teardown);
  const x = e.tensor([1, 2, 3, 4], [4]);
  const madeBy: number[] = [];
  let y = x;
  for (let i = 0; i < 4; i++) {
    if (y !== x) y.dispose();
    const before = made();
    y = e.tidy(() => ops.scale(ops.add(ops.mul(x, x), x), 0.5)); // (x² + x) / 2
    await e.settle();
    madeBy.push(made() - before);
  }
  t.same(Array.from(await y.read()), [1, 3, 6, 10]);
  t.ok(madeBy[0] >= 3, `the first iteration makes its bind groups (${madeBy[0]})`);
  t.same(madeBy.slice(1), [0, 0, 0], `the next ones none (${madeBy})`);
  y.dispose();
  x.dispose();
});

// Full, the cache keeps the bind groups it has: a loop's first ones still hit.
t.test('an engine keeps at most an eighth of maxCommandsInFlight bind groups, the first ones it made', async (t) => {
  const small = await createEngine({ maxCommandsInFlight: 64 }); // keeps 8
  t.teardown(() => small.dispose());
  const device = small.device;
  const made = countBindGroups(device, t.teardown);
  const x = small.tensor([1, 2], [2]);
  const run = async () => {
    const ys = Array.from({ length: 12 }, (_, i) => ops.scale(x, i)); // 12 outputs, 12 bind groups
    for (const [i, y] of ys.entries()) t.same(Array.from(await y.read()), [i, 2 * i]);
    for (const y of ys) y.dispose();
  };
  await run();
  t.equal(made(), 12);
  t.equal(small.memoryStats().bindGroups, 8);
  await run(); // the pool hands out the same buffers in the same order
  t.equal(made(), 16, 'the first 8 dispatches reuse theirs, the last 4 make new ones');
  t.equal(small.memoryStats().bindGroups, 8);
});

t.test('tidy disposes intermediates and keeps the result', async (t) => {
  const x = e.tensor([1, 2, 3], [3]);
  const live0 = e.memoryStats().liveBytes;
  const y = e.tidy(() => ops.scale(ops.add(ops.mul(x, x), x), 2));
  t.equal(e.memoryStats().liveBytes - live0, 256, 'only the result stays live');
  t.same(Array.from(await y.read()), [4, 12, 24]);
  y.dispose();
  t.throws(() => y.buffer, /used after dispose/);
});

t.test('readTensors reads several tensors back in one round trip, each its own values', async (t) => {
  const a = e.tensor([1.5], [1]);
  const b = e.tensor([-2, 0, 7], [3]);
  const empty = e.empty([0]);
  const c = e.tensor([9, 8, 7, 6, 5], [5]);
  const [ra, rb, rEmpty, rc] = await e.readTensors([a, b, empty, c]);
  t.same(Array.from(ra), [1.5]);
  t.same(Array.from(rb), [-2, 0, 7]);
  t.equal(rEmpty.length, 0);
  t.same(Array.from(rc), [9, 8, 7, 6, 5]);
  t.same(await e.readTensors([]), []);
  for (const x of [a, b, empty, c]) x.dispose();
});

t.test('backward frees what the tape saved', async (t) => {
  const x = e.tensor([0.5, -1, 2], [3]);
  x.requiresGrad = true;
  const live0 = e.memoryStats().liveBytes;
  const loss = e.tidy(() => ops.sum(ops.silu(ops.mul(x, x))));
  e.tape.backward(loss);
  loss.dispose();
  t.equal(e.tape.length, 0);
  t.equal(e.memoryStats().liveBytes - live0, 256, 'only x.grad remains');
  x.dispose();
});

// add and sub saved both operands for a backward that reads neither: a residual branch's output
// stayed alive until the backward although the caller had dropped it.
t.test('add and sub save no operand, mul only the other operand of an input that wants a gradient', async (t) => {
  const x = e.tensor([0.5, -1, 2, 3], [4]);
  x.requiresGrad = true;
  const [c, c3, c5] = [2, 3, 5].map((v) => e.tensor([v, v, v, v], [4]));
  const live0 = e.memoryStats().liveBytes;
  const h = ops.mul(x, c3); // saves c3 (the caller's), not x
  const k = ops.mul(x, c5);
  const y = ops.sub(ops.add(h, x), k);
  h.dispose();
  k.dispose();
  t.equal(e.memoryStats().liveBytes - live0, 2 * 256, 'h and k are freed at once; the add and y remain');
  const z = ops.mul(y, c); // d/dy needs c (the caller's); d/dc is not wanted, so y is not saved
  const live1 = e.memoryStats().liveBytes;
  y.dispose();
  t.equal(e.memoryStats().liveBytes - live1, -256, 'y is freed: no rule reads it');
  e.tape.backward(ops.sum(z));
  t.same(Array.from(await x.grad!.read()), [-2, -2, -2, -2], 'd/dx Σ 2·(3x + x − 5x) = −2');
  for (const v of [x, c, c3, c5, z]) v.dispose();
});

// A rule can throw (a binding over the device's limit, the command backlog): the nodes walked
// before it had released their saved tensors, and the tape's clear() released them again, so a
// tensor saved by a later graph was freed while that graph still needed it.
t.test('a backward rule that throws leaves the tape cleared and saved tensors held exactly as needed', async (t) => {
  const w = e.tensor([1, 1, 1, 1], [4], 'w');
  w.requiresGrad = true;
  const x = e.tensor([5, 6, 7, 8], [4], 'x');
  const y = ops.mul(w, x);
  const boom = ops.scale(y, 1);
  e.tape.record('boom', [y], [boom], [x], () => {
    throw new Error('boom rule');
  });
  const loss = ops.sum(ops.mul(boom, x));
  t.throws(() => e.tape.backward(loss), /boom rule/);
  t.equal(e.tape.length, 0, 'the tape is cleared');
  e.tape.clear();
  // A new graph saving x, then x disposed by the caller: the tape alone keeps it for backward.
  const loss2 = ops.sum(ops.mul(w, x));
  x.dispose();
  e.tape.backward(loss2);
  t.same(Array.from(await w.grad!.read()), [5, 6, 7, 8], 'dL/dw = x, by hand');
  for (const v of [w, y, boom, loss, loss2]) v.dispose();
});

t.test('a tidy whose function throws frees what it made', async (t) => {
  const live = e.memoryStats().liveBytes;
  const x = e.tensor([1, 2, 3], [3]);
  t.throws(() => e.tidy(() => {
    ops.mul(x, x);
    ops.add(x, e.tensor([1, 1, 1], [3]));
    throw new Error('a later op failed');
  }), /a later op failed/);
  x.dispose();
  t.equal(e.memoryStats().liveBytes, live);
});

// The ops recorded inside stayed on the tape with what they saved (16 KB a try on a U-Net's
// scale) until a backward, which an inference loop that retries never calls.
t.test('a tidy whose function throws drops the ops it recorded, unless a tensor it kept needs them', async (t) => {
  const live = e.memoryStats().liveBytes;
  const x = e.tensor([1, 2, 3], [3]);
  x.requiresGrad = true;
  t.throws(() => e.tidy(() => {
    ops.exp(ops.mul(x, x));
    throw new Error('a later op failed');
  }), /a later op failed/);
  t.equal(e.tape.length, 0, 'nothing left on the tape');
  x.dispose();
  t.equal(e.memoryStats().liveBytes, live, 'nothing the ops saved stays allocated');

  // A tensor kept past the scope still reaches x through what was recorded: d/dx Σ x² = 2x.
  const w = e.tensor([1, 2, 3], [3]);
  w.requiresGrad = true;
  let kept: ReturnType<typeof ops.mul> | undefined;
  t.throws(() => e.tidy(() => {
    kept = e.keep(ops.mul(w, w));
    ops.exp(kept);
    throw new Error('a later op failed');
  }), /a later op failed/);
  e.tape.backward(ops.sum(kept!));
  t.same(Array.from(await w.grad!.read()), [2, 4, 6]);
  for (const v of [w, kept!]) v.dispose();
});

// Buffers freed by one phase stay pooled for their size class: extraction then training held the
// sum of both. A buffer freed while recorded work still reads it must outlive that work's submit.
t.test('releasePooled gives the pooled buffers back, after submitting the work that used them', async (t) => {
  const a = e.tensor([1, 2, 3], [3]);
  const b = ops.add(a, a);
  a.dispose();
  t.ok(e.memoryStats().pooledBytes > 0, 'a\'s buffer went to the pool');
  e.releasePooled();
  t.equal(e.memoryStats().pooledBytes, 0, 'nothing pooled');
  t.same(Array.from(await b.read()), [2, 4, 6], 'the work recorded before ran on a\'s values');
  const c = ops.mul(b, b);
  t.same(Array.from(await c.read()), [4, 16, 36], 'the engine works on');
  for (const x of [b, c]) x.dispose();
});

// Recording resumed at an async function's first await: what it ran after was recorded and kept
// its activations, with no word.
t.test('noGrad refuses an async function (recording would resume at its first await)', async (t) => {
  const x = e.tensor([1], [1]);
  x.requiresGrad = true;
  t.throws(() => e.noGrad(async () => ops.mul(x, x)), /noGrad: fn returned a promise; noGrad is synchronous/);
  t.equal(e.tape.length, 0);
  x.dispose();
});

// Cleared on an op's output, requiresGrad silently cut the gradient there: d/dx Σ (x·x)·x came back
// as x² (the product's branch dropped) where it is 3x². PyTorch refuses it on non-leaves.
t.test('requiresGrad cannot be cleared on an output of a recorded op; on a leaf it can', async (t) => {
  const x = e.tensor([1, 2], [2]);
  x.requiresGrad = true;
  const y = ops.mul(x, x);
  t.throws(() => { y.requiresGrad = false; }, /mul\(.*\) \[2\] was computed by a recorded op, so its requiresGrad cannot be cleared/);
  e.tape.backward(ops.sum(ops.mul(y, x)));
  t.same(Array.from(await x.grad!.read()), [3, 12], 'd/dx Σ x³ = 3x²');
  y.requiresGrad = false; // its op dropped by the backward: nothing left to cut
  x.requiresGrad = false;
  t.notOk(x.requiresGrad, 'a leaf\'s flag clears');
  for (const v of [x, y]) v.dispose();
});

t.test('noGrad records nothing', async (t) => {
  const x = e.tensor([1], [1]);
  x.requiresGrad = true;
  const y = e.noGrad(() => ops.mul(x, x));
  t.equal(y.requiresGrad, false);
  t.equal(e.tape.length, 0);
});

t.test('gradients accumulate across backward calls until cleared', async (t) => {
  const x = e.tensor([3], [1]);
  x.requiresGrad = true;
  e.tape.backward(ops.sum(ops.mul(x, x)));
  e.tape.backward(ops.sum(ops.mul(x, x)));
  t.same(Array.from(await x.grad!.read()), [12]);
});

// engine.view is public: a view of a tensor that needs a gradient was not recorded, so the
// gradient stopped at it (x got none, the loss "depended on nothing").
t.test('engine.view of a tensor that needs a gradient passes the gradient back in its shape', async (t) => {
  const x = e.tensor([1, 2, 3, 4, 5, 6], [2, 3]);
  x.requiresGrad = true;
  const v = e.view(x, [3, 2]);
  t.ok(v.requiresGrad, 'the view needs a gradient too');
  // d/dx Σ (v ⊙ w) = w viewed back: w = [[1, 2], [3, 4], [5, 6]] → x.grad = [[1, 2, 3], [4, 5, 6]].
  e.tape.backward(ops.sum(ops.mul(v, e.tensor([1, 2, 3, 4, 5, 6], [3, 2]))));
  t.same(x.grad!.shape, [2, 3]);
  t.same(Array.from(await x.grad!.read()), [1, 2, 3, 4, 5, 6]);
  const plain = e.tensor([1, 2], [2]);
  t.notOk(e.view(plain, [1, 2]).requiresGrad, 'a view of a tensor without a gradient records nothing');
});

// add passes its gradient through to both inputs: x.grad and c.grad were views of the seed itself,
// so a write to the seed (or to one gradient) changed both gradients. PyTorch copies them.
t.test('leaf gradients own their buffers: none shares the seed\'s or another leaf\'s', async (t) => {
  const x = e.tensor([1, 2], [2], 'x');
  const c = e.tensor([5, 6], [2], 'c');
  x.requiresGrad = true;
  c.requiresGrad = true;
  const seed = e.tensor([3, 4], [2], 'seed');
  e.tape.backward(ops.add(x, c), seed);
  t.not(x.grad!.storage, seed.storage);
  t.not(c.grad!.storage, seed.storage);
  t.not(x.grad!.storage, c.grad!.storage);
  e.fill(seed, 0);
  t.same([Array.from(await x.grad!.read()), Array.from(await c.grad!.read()), Array.from(await seed.read())], [[3, 4], [3, 4], [0, 0]], 'the seed, still the caller\'s, changed alone');
  for (const v of [x, c, seed]) v.dispose();
});

t.test('a tensor whose graph an earlier backward released is refused, never taken for a leaf', async (t) => {
  // Hand-worked: x = [1, 2, 3], a = x², loss₂ = Σ a² = Σ x⁴, d/dx = 4x³ = [4, 32, 108]. The first
  // backward used to drop a's op, and a then counted as a leaf: x got no gradient, a got [2, 8, 18].
  const x = e.tensor([1, 2, 3], [3]);
  x.requiresGrad = true;
  const a = ops.mul(x, x);
  e.tape.backward(ops.sum(ops.scale(x, 5)));
  t.throws(() => ops.mul(a, a), /mul\(.*\) \[3\] was computed before a backward\(\) \(or tape.clear\(\)\) that released its graph, so mul cannot record it as an input: compute it again after the backward\(\), or call backward\(\) once on the sum of the losses/);
  // Computed again after it, the gradient flows to x.
  x.grad = null;
  const again = ops.mul(x, x);
  e.tape.backward(ops.sum(ops.mul(again, again)));
  t.same(Array.from(await x.grad!.read()), [4, 32, 108]);
  // Two losses of one forward: the second backward says why it cannot run (it said "does not depend on any tensor that requires grad").
  const y = ops.mul(x, x);
  const [l1, l2] = [ops.sum(y), ops.sum(ops.scale(y, 2))];
  e.tape.backward(l1);
  t.throws(() => e.tape.backward(l2), /released its graph, so backward\(\) cannot run through it again/);
  t.throws(() => e.tape.backward(l1), /released its graph/);
});

t.test('backward takes a seed of the root\'s shape only, and the inputs that wanted a gradient when recorded', async (t) => {
  // A [4, 1] seed for a [1, 4] root was broadcast against it and summed: x.grad [10, 10, 10, 10], not the seed.
  const x = e.tensor([1, 2, 3, 4], [1, 4]);
  x.requiresGrad = true;
  const y = ops.mul(x, e.tensor([1, 1, 1, 1], [1, 4]));
  t.throws(() => e.tape.backward(y, e.tensor([1, 2, 3, 4], [4, 1])), /backward\(\): gradient \[4,1\] does not match .* \[1,4\]; give it the root.s shape/);
  e.tape.backward(y, e.tensor([1, 2, 3, 4], [1, 4]));
  t.same(Array.from(await x.grad!.read()), [1, 2, 3, 4]);
  // w wanted no gradient when y = x·w was recorded: only its second use counts (PyTorch: d/dw Σ y·w = y = [3, 8]).
  const x2 = e.tensor([1, 2], [2]);
  x2.requiresGrad = true;
  const w = e.tensor([3, 4], [2]);
  const y2 = ops.mul(x2, w);
  w.requiresGrad = true;
  e.tape.backward(ops.sum(ops.mul(y2, w)));
  t.same(Array.from(await w.grad!.read()), [3, 8]);
});

t.test("backward() and fill() refuse another engine's tensors (tensor ids count per engine, so its tape walked our nodes)", async (t) => {
  const other = await createEngine({ device: e.device });
  const [wA, wB] = [e.tensor([1, 2, 3], [3]), other.tensor([10, 20, 30], [3])];
  wA.requiresGrad = true;
  wB.requiresGrad = true;
  const lossA = ops.sum(ops.mul(wA, wA));
  const lossB = ops.sum(ops.mul(wB, wB));
  // Before: no error, wA.grad = [2, 4, 6] from B's loss, and A's own graph released.
  t.throws(() => e.tape.backward(lossB), /backward\(\): tensor ".*" belongs to another Engine/);
  t.throws(() => e.fill(wB, 0), /fill: tensor ".*" belongs to another Engine/);
  e.tape.backward(lossA);
  t.same(Array.from(await wA.grad!.read()), [2, 4, 6], "A's own gradient, once");
  other.tape.backward(lossB);
  t.same(Array.from(await wB.grad!.read()), [20, 40, 60]);
  await other.dispose();
});

t.test('a leaf disposed before backward gets no gradient (it would never be freed)', async (t) => {
  const x = e.tensor([1, 2, 3], [3]);
  const live0 = e.memoryStats().liveBytes;
  for (let step = 0; step < 3; step++) {
    const w = e.tensor([1, 1, 1], [3]);
    w.requiresGrad = true;
    const loss = e.tidy(() => ops.sum(ops.mul(x, w)));
    w.dispose();
    e.tape.backward(loss);
    t.equal(w.grad, null);
    loss.dispose();
  }
  t.equal(e.memoryStats().liveBytes, live0, 'nothing left behind');
});

t.test('a GPU validation error surfaces as a GpuError carrying the label; the engine then refuses work instead of reading zeros', async (t) => {
  const engine = await createEngine({ device: e.device });
  const params = uniformLayout({ n: 'u32' });
  const bad = { key: 'deliberately-broken-kernel', code: `${params.wgsl}\n@compute @workgroup_size(1) fn main() { let x: f32 = u.n; }`, params };
  // Uploaded in the batch the broken kernel is in: WebGPU drops that batch whole, upload included.
  const w = engine.tensor([1, 2, 3, 4], [4], 'w');
  engine.dispatch({ kernel: bad, bindings: [], params: { n: 1 }, workgroups: [1] });
  const err = await engine.sync().then(() => null, (x: Error) => x);
  t.ok(err instanceof GpuError, 'a GpuError');
  t.match(err?.message, /deliberately-broken-kernel/, 'naming the kernel');
  // w read [0, 0, 0, 0] here, and every op on it computed from zeros, with no error.
  const dropped = /WebGPU earlier error: [\s\S]*deliberately-broken-kernel[\s\S]* dropped the whole batch [\s\S]*create a new engine and load the weights again/;
  await t.rejects(w.read(), dropped, 'a read of what the dropped batch uploaded fails');
  t.throws(() => ops.scale(w, 2), dropped, 'so does an op');
  await t.rejects(engine.sync(), dropped);
  await engine.dispose();
});

// Dawn reports a dispatch over the limit only at the next sync, and drops the whole command
// buffer with it: the engine refuses it when it is asked, and what was recorded before still runs.
t.test('a dispatch of more workgroups than maxComputeWorkgroupsPerDimension is refused before it is recorded', async (t) => {
  const limit = e.limits.maxComputeWorkgroupsPerDimension;
  const params = uniformLayout({ n: 'u32' });
  const code = `${params.wgsl}
@group(0) @binding(1) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(1) fn main(@builtin(workgroup_id) wid: vec3<u32>) { if (wid.x == 0u) { out[0] = f32(u.n); } }`;
  const kernel = { key: 'one-value-kernel', code, params };
  const recorded = ops.add(e.tensor([1, 2], [2]), e.tensor([3, 4], [2]));
  const out = e.zeros([1]);
  for (const workgroups of [[limit + 1, 1, 1], [1, limit + 1, 1], [1, 1, limit + 1]] as const) {
    t.throws(
      () => e.dispatch({ kernel, bindings: [out], params: { n: 1 }, workgroups }),
      new RangeError(`one-value-kernel: ${workgroups.join(' × ')} workgroups, over this device's maxComputeWorkgroupsPerDimension (${limit}) in a dimension`),
    );
  }
  t.same(Array.from(await recorded.read()), [4, 6], 'the work recorded before it runs');
  e.dispatch({ kernel, bindings: [out], params: { n: 5 }, workgroups: [limit, 1, 1] });
  t.same(Array.from(await out.read()), [5], 'a dispatch at the limit runs');
});

t.test('an engine on the caller\'s own device leaves the device usable after dispose', async (t) => {
  const { device } = await requestDevice();
  const mine = await createEngine({ device });
  const y = ops.add(mine.tensor([1, 2], [2]), mine.tensor([3, 4], [2]));
  t.same(Array.from(await y.read()), [4, 6]);
  mine.dispose();
  // The device still works for the caller.
  const buf = device.createBuffer({ size: 16, usage: GPUBufferUsage.COPY_DST });
  device.queue.writeBuffer(buf, 0, new Float32Array(4));
  await device.queue.onSubmittedWorkDone();
  t.pass('device alive');
  device.destroy();
});

t.test('the first read after the app destroys its device says the device was lost (a bare AbortError before)', async (t) => {
  const { device } = await requestDevice();
  const mine = await createEngine({ device });
  const x = mine.tensor([1, 2], [2]);
  t.same(Array.from(await x.read()), [1, 2]);
  device.destroy();
  const err = await ops.scale(x, 2).read().then(() => null, (e: Error) => e);
  t.type(err, GpuError);
  t.match(err?.message, /device-lost error: destroyed/);
});

t.test('a read gets the errors of the work before it, not of an op recorded after it', async (t) => {
  const engine = await createEngine({ device: e.device });
  const x = engine.tensor([1, 2, 3, 4], [4], 'x');
  const first = ops.scale(x, 3).read();
  // An op on a caller buffer destroyed before the submit: its own read fails, the earlier one does not.
  const gone = e.device.createBuffer({ size: 16, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC, label: 'gone' });
  const z = engine.fromBuffer(gone, [4]);
  gone.destroy();
  const second = ops.scale(z, 2).read();
  const [a, b] = await Promise.allSettled([first, second]);
  t.same(a.status === 'fulfilled' ? Array.from(a.value) : String((a as PromiseRejectedResult).reason), [3, 6, 9, 12]);
  t.match(b.status === 'rejected' ? String(b.reason) : 'fulfilled', /validation error: \[Buffer "gone"\] used in submit while destroyed/);
  await engine.dispose();
});

t.test('maxBindingBytes must be a whole number of bytes', async (t) => {
  // NaN passed, and the U-Net's batch split then said one image needed 32768 bytes "over the largest this engine may use, 134217728".
  for (const v of [Number.NaN, -1, 0, 1.5]) await t.rejects(createEngine({ device: e.device, maxBindingBytes: v }), new RegExp(`maxBindingBytes must be a whole number of bytes ≥ 4, got ${v}`));
});

t.test('tidy refuses an async function (its scope would close before the awaits)', async (t) => {
  t.throws(() => e.tidy(async () => 0), /tidy: fn returned a promise; tidy is synchronous/);
  // What it made before its first await belongs to the enclosing scope: the outer tidy frees it
  // (it was in no scope, kept until the engine was disposed).
  const live = e.memoryStats().liveBytes;
  const x = e.tensor([1, 2, 3], [3]);
  e.tidy(() => {
    t.throws(() => e.tidy(async () => {
      ops.mul(x, x);
      await Promise.resolve();
    }), /tidy: fn returned a promise/);
  });
  x.dispose();
  t.equal(e.memoryStats().liveBytes, live);
});

t.test('a tuning whose workgroups the device cannot run, or an adapter without its device, is refused at once', async (t) => {
  const limit = e.device.limits.maxComputeInvocationsPerWorkgroup;
  await t.rejects(createEngine({ device: e.device, tuning: { matmul: { wgX: 32, wgY: (2 * limit) / 32 } } }), new RegExp(`tuning matmul: workgroups of 32 × ${(2 * limit) / 32} threads .*do not fit this device .*${limit} in all`));
  const engine = await createEngine({ device: e.device });
  t.throws(() => engine.setTuning({ conv2d: { wgX: 4096 } }), /tuning conv2d: workgroups of 4096 × 8 threads \(with the generic tile's sizes for those not given\) do not fit/);
  // Checked as the kernels see them, the built-in 8 × 8 tiling under the tuned sizes: 1024 × 8
  // threads passed as 1024 × 1 and failed at the first large matmul.
  t.throws(() => engine.setTuning({ matmul: { wgX: limit, tm: 1, tn: 1, tk: 1 } }), new RegExp(`tuning matmul: workgroups of ${limit} × 8 threads`));
  // Conv tiles the conv kernels cannot build (their slab fill needs powers of two) failed only at
  // the first conv large enough to use them, naming neither the tuning nor the file.
  t.throws(() => engine.setTuning({ conv2d: { wgX: 3, wgY: 1, tm: 4, tn: 4, tk: 4 } }), /tuning conv2d: .* cannot build the conv kernels \(register tile: threads 3 must be a power of two\): give wgX·wgY, wgX·tn and tk as powers of two/);
  t.throws(() => engine.setTuning({ matmul: { tm: 64, tn: 64, tk: 64 } }), /tuning matmul: .* stages \d+ bytes of workgroup memory, over this device's \d+/);
  engine.setTuning({ conv2d: { wgX: 4, wgY: 4, tm: 8, tn: 8, tk: 16 } });
  t.same(engine.tuning, { conv2d: { wgX: 4, wgY: 4, tm: 8, tn: 8, tk: 16 } }, 'a tiling that builds is taken');
  t.throws(() => engine.setTuning({ matmul: { tm: Number.NaN } }), /Engine\.setTuning → matmul → tm is NaN, not a whole number ≥ 1/, 'NaN named as NaN (it read "null")');
  // tm × tn accumulators are unrolled: 24 × 24 compiled for 42 s at the first large matmul, 64 × 64 never finished.
  await t.rejects(createEngine({ device: e.device, tuning: { matmul: { wgX: 1, wgY: 1, tm: 24, tn: 24, tk: 1 } } }), /tuning matmul: 24 × 24 outputs per thread, over the 256 a kernel may unroll .*choose smaller tm\/tn/);
  await engine.dispose();
  // The engine keeps its own copy: setTuning on one engine changed the caller's object and every engine made from it.
  const mine = { matmul: { wgX: 8, wgY: 8, tm: 8, tn: 8, tk: 16 } };
  const [one, two] = [await createEngine({ device: e.device, tuning: mine }), await createEngine({ device: e.device, tuning: mine })];
  one.setTuning({ conv2d: { wgX: 4, wgY: 4, tm: 8, tn: 8, tk: 16 } });
  t.same(mine, { matmul: { wgX: 8, wgY: 8, tm: 8, tn: 8, tk: 16 } }, "the caller's object is unchanged");
  t.same(two.tuning, mine, 'the other engine keeps its tuning');
  await one.dispose();
  await two.dispose();
  await t.rejects(createEngine({ adapter: {} as GPUAdapter }), /createEngine: `adapter` names the adapter of the `device` option/);
});

// Each of these failed the engine for good in WebGPU's validation (every later call: "earlier error").
t.test('copies and reads that WebGPU would refuse are refused before they are recorded, and the engine works on', async (t) => {
  const x = e.tensor([1, 2, 3, 4], [4], 'x');
  t.throws(() => e.copyBuffer(x.buffer, 2, x.buffer, 8, 4), /copy from difrep x to difrep x: 4 bytes from offset 2 to offset 8; all three must be multiples of 4/);
  await t.rejects(e.readBuffer(x.buffer, 2, 8), /read of difrep x: offset 2 is not a multiple of 4/);
  await t.rejects(e.readBuffer(x.buffer, 8, x.buffer.size), new RegExp(`read of difrep x: ${x.buffer.size} bytes from offset 8 run past its ${x.buffer.size} bytes`));
  // A caller's buffer given to fromBuffer needs only STORAGE and COPY_SRC; an optimizer step copies into it.
  const appBuffer = e.device.createBuffer({ size: 16, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC, label: 'app weights' });
  t.throws(() => e.copyBuffer(x.buffer, 0, appBuffer, 0, 16), /copy to app weights: the buffer was not created with GPUBufferUsage\.COPY_DST/);
  // fill and writeBuffer into it, and a toBuffer with MAP_WRITE (WebGPU allows it with COPY_SRC only), were accepted.
  const appTensor = e.fromBuffer(appBuffer, [4], 'app weights');
  t.throws(() => e.fill(appTensor, 0), /fill app weights: its buffer was not created with GPUBufferUsage\.COPY_DST/);
  t.throws(() => e.writeBuffer(appBuffer, 0, new Float32Array(4)), /writeBuffer to app weights: the buffer was not created with GPUBufferUsage\.COPY_DST/);
  t.throws(() => e.toBuffer(x, GPUBufferUsage.MAP_WRITE | GPUBufferUsage.COPY_SRC), /toBuffer: usage \d+ includes MAP_WRITE, which WebGPU allows with COPY_SRC only/);
  t.same(Array.from(await ops.scale(x, 2).read()), [2, 4, 6, 8], 'the engine works on');
  appTensor.dispose();
  appBuffer.destroy();
  x.dispose();
});

// The profiler's query set holds 4096 queries (two per dispatch); it was made for maxDispatchesPerSubmit
// dispatches, so 3000 failed the engine, and a batch of more than it holds went partly untimed.
t.test('profiling with maxDispatchesPerSubmit over 2048 times every dispatch', { skip: !e.hasFeature('timestamp-query') && 'no timestamp-query' }, async (t) => {
  const big = await createEngine({ maxDispatchesPerSubmit: 3000, maxCommandsInFlight: 10000 });
  big.startProfiling();
  const x = big.tensor([1], [1], 'x');
  for (let i = 0; i < 2100; i++) ops.scale(x, 1).dispose();
  const times = await big.stopProfiling();
  t.equal(times.filter((k) => k.kernel.startsWith('unary')).reduce((n, k) => n + k.calls, 0), 2100, 'every dispatch timed');
  await big.dispose();
});

// PyTorch refuses this ("modified by an inplace operation"); the tape ran the rule on the new
// values: after an SGD step between forward and backward, the gradient of Σ w²·x was 2·w_new·x.
t.test('a backward that would read a tensor written in place since its forward is refused', async (t) => {
  const w = e.tensor([1, 2, 3], [3], 'w');
  w.requiresGrad = true;
  const x = e.tensor([4, 5, 6], [3], 'x');
  const loss = ops.sum(ops.mul(ops.mul(w, w), x)); // mul saves w (for the other operand's gradient)
  e.fill(w, 0);
  t.throws(() => e.tape.backward(loss), /backward of mul: w \[3\], which it needs, was written in place after the forward/);
  t.equal(e.tape.length, 0, 'the tape is cleared');
  // Written before the forward records: nothing to refuse.
  const again = ops.sum(ops.mul(ops.mul(w, w), x));
  e.tape.backward(again);
  t.same(Array.from(await w.grad!.read()), [0, 0, 0], '2·w·x at w = 0');
  w.dispose();
  x.dispose();
});
