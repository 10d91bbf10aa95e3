// Embedding: the engine on the caller's own GPUDevice, beside another WebGPU library (tfjs), with
// the caller's buffers in and out, checked against the PyTorch dump of adm32-mini.
import t from 'tap';
import * as tf from '@tensorflow/tfjs-core';
import { WebGPUBackend } from '@tensorflow/tfjs-backend-webgpu';
import { create, globals } from 'webgpu';
import { createEngine, ops } from '../../src/index.ts';
import { openSafetensors } from '../../src/model/checkpoint/safetensors.ts';
import { withPrefix } from '../../src/model/checkpoint/tensor-source.ts';
import { compareArrays } from '../../src/model/parity.ts';
import { UNet } from '../../src/model/unet.ts';
import { flagsFromJson } from '../../src/model/unet-config.ts';

// The app's own WebGPU: Dawn as navigator.gpu (tfjs looks there), and a device the app requests,
// owns and keeps using after the engine is gone.
Object.assign(globalThis, globals);
const gpu = create([]);
Object.defineProperty(globalThis, 'navigator', { value: { gpu, userAgent: 'node' }, configurable: true });
const adapter = (await gpu.requestAdapter())!;
const device = await adapter.requestDevice({ label: 'app device' });
const uncaptured: string[] = [];
const handler = (ev: GPUUncapturedErrorEvent) => uncaptured.push(ev.error.message);
device.onuncapturederror = handler;

// tfjs's kernels are registered under the name 'webgpu': give that name a backend on the app's device.
if (tf.findBackendFactory('webgpu')) tf.removeBackend('webgpu');
tf.registerBackend('webgpu', () => new WebGPUBackend(device));
if (!(await tf.setBackend('webgpu'))) throw new Error('tfjs-backend-webgpu did not start on the app device');

async function readCallerBuffer(buffer: GPUBuffer, bytes: number): Promise<Float32Array> {
  const staging = device.createBuffer({ size: bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST, label: 'app staging' });
  const enc = device.createCommandEncoder({ label: 'app readback' });
  enc.copyBufferToBuffer(buffer, 0, staging, 0, bytes);
  device.queue.submit([enc.finish()]);
  await staging.mapAsync(GPUMapMode.READ);
  const out = new Float32Array(staging.getMappedRange().slice(0));
  staging.destroy();
  return out;
}

async function tfMatmulCheck(t: { same(a: unknown, b: unknown, m: string): boolean }, label: string) {
  // [[1,2],[3,4]]·[[5,6],[7,8]] = [[19,22],[43,50]] (read with data(): dataSync needs a canvas)
  const c = tf.matMul(tf.tensor2d([1, 2, 3, 4], [2, 2]), tf.tensor2d([5, 6, 7, 8], [2, 2]));
  t.same(Array.from(await c.data()), [19, 22, 43, 50], `tfjs on the shared device is right ${label}`);
  c.dispose();
}

t.test('caller buffers in and out, beside tfjs on the same device, every block as in the dump', async (t) => {
  await tfMatmulCheck(t, 'before the engine');
  const engine = await createEngine({ device });
  const dump = await openSafetensors(new URL('../fixtures/adm32-mini.safetensors', import.meta.url).pathname);
  const flags = flagsFromJson(dump.metadata.config);
  const unet = await UNet.load(engine, flags, withPrefix(dump, 'param.'));
  const xtInfo = dump.info('input.x_t')!;
  const xtData = await dump.read('input.x_t');
  // The app's own input buffer, written by the app.
  const input = device.createBuffer({ size: xtData.byteLength, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC, label: 'app x_t' });
  device.queue.writeBuffer(input, 0, new Float32Array(xtData));
  const blocks = unet.plan.blocks.map((b) => b.b);
  const x = engine.fromBuffer(input, xtInfo.shape);
  const r = unet.forward(x, Array.from(await dump.read('input.t')), { taps: blocks });
  await tfMatmulCheck(t, 'between difrep dispatches');
  const outputs = new Map(blocks.map((b) => [b, { buffer: engine.toBuffer(r.taps.get(b)!), bytes: r.taps.get(b)!.byteLength }]));
  await engine.sync(); // surfaces any GPU error of the engine's work
  await engine.dispose();
  t.equal(device.onuncapturederror, handler, 'the app\'s onuncapturederror is untouched');
  // After dispose: the app's input and the returned feature buffers are alive and right.
  for (const b of blocks) {
    const { buffer, bytes } = outputs.get(b)!;
    t.match(buffer.label, /^difrep output/, `block ${b}: the returned buffer is labelled`);
    const got = await readCallerBuffer(buffer, bytes);
    const c = compareArrays(`block.${b}`, got, await dump.read(`block.${b}`), 1e-5);
    t.ok(c.maxRel <= 1e-5, `block ${b} from the caller's buffer: ${c.maxRel.toExponential(2)}`);
    buffer.destroy();
  }
  t.same(await readCallerBuffer(input, xtData.byteLength), xtData, 'the app\'s input buffer is untouched');
  input.destroy();
  await dump.close();
  await tfMatmulCheck(t, 'after engine.dispose() (the device is not destroyed)');
  t.throws(() => engine.tensor([1], [1]), /disposed/, 'the disposed engine refuses work');
  t.same(uncaptured, [], 'no uncaptured errors on the app\'s device');
});

t.test('fromBuffer explains a buffer that cannot be a tensor', async (t) => {
  const engine = await createEngine({ device });
  const mapOnly = device.createBuffer({ size: 64, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST, label: 'app staging' });
  t.throws(() => engine.fromBuffer(mapOnly, [4]), /app staging: the buffer needs GPUBufferUsage.STORAGE/);
  const small = device.createBuffer({ size: 64, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC, label: 'app small' });
  t.throws(() => engine.fromBuffer(small, [1, 3, 4, 4]), /app small: shape \[1, ?3, ?4, ?4\] needs 192 bytes of f32, the buffer has 64/);
  // Without COPY_SRC the engine's first copy out of it (a batch split into chunks) failed validation,
  // and its whole submit was dropped: the features came back all zero.
  const noCopy = device.createBuffer({ size: 64, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST, label: 'app images' });
  t.throws(() => engine.fromBuffer(noCopy, [16]), /app images: the buffer needs GPUBufferUsage.STORAGE \| GPUBufferUsage.COPY_SRC to be used as a tensor/);
  const mapped = device.createBuffer({ size: 64, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC, mappedAtCreation: true, label: 'app mapped' });
  t.throws(() => engine.fromBuffer(mapped, [16]), /app mapped: the buffer is mapped; unmap it before using it as a tensor/);
  await engine.dispose();
  for (const b of [mapOnly, small, noCopy, mapped]) b.destroy();
});

t.test('dispose() rejects with a GPU error of work no read or sync checked (a toBuffer copy was dropped unseen)', async (t) => {
  const engine = await createEngine({ device });
  const { scale } = await import('../../src/engine/ops/elementwise.ts');
  const gone = device.createBuffer({ size: 16, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC, label: 'app gone' });
  const x = engine.fromBuffer(gone, [4]);
  gone.destroy();
  const out = engine.toBuffer(scale(x, 2)); // submitted with the op on a destroyed buffer: the whole submit is dropped
  await t.rejects(engine.dispose(), /\[Buffer "app gone"\] used in submit while destroyed/);
  out.destroy();
  const clean = await createEngine({ device });
  await t.resolves(clean.dispose(), 'an engine whose work was all good disposes quietly');
});

t.test('an op refuses tensors of another engine on the same device (it read stale data)', async (t) => {
  const [a, b] = [await createEngine({ device }), await createEngine({ device })];
  const { add } = await import('../../src/engine/ops/elementwise.ts');
  const x = a.tensor([1, 2, 3, 4], [4], 'x');
  const y = b.tensor([10, 20, 30, 40], [4], 'y');
  t.throws(() => add(x, y), /tensor "y" belongs to another Engine; an op takes tensors of one engine/);
  await t.rejects(a.readTensors([y]), /read: tensor "y" belongs to another Engine/);
  // The copying and sharing ops too: B's upload was not submitted yet, so they read zeros.
  const { concatRows } = await import('../../src/engine/ops/layout.ts');
  t.throws(() => concatRows([x, y]), /concatRows: tensor "y" belongs to another Engine/);
  t.throws(() => a.view(y, [2, 2]), /view: tensor "y" belongs to another Engine/);
  t.same(Array.from(await add(x, x).read()), [2, 4, 6, 8], 'the engine still works');
  await a.dispose();
  await b.dispose();
});

t.test("the app's errors stay the app's, and a read issued before dispose() gets its data", async (t) => {
  const engine = await createEngine({ device });
  const { scale } = await import('../../src/engine/ops/elementwise.ts');
  const x = engine.tensor([1, 2, 3, 4], [4], 'x');
  const y = scale(x, 2); // recorded, not yet submitted: the engine's batch is open
  const before = uncaptured.length;
  // The app's invalid buffer, made while that batch is open, went to the engine's error scope and failed its read.
  device.createBuffer({ size: 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.STORAGE, label: 'app mistake' });
  t.same(Array.from(await y.read()), [2, 4, 6, 8], 'the engine\'s read succeeds');
  // The event arrives asynchronously: wait for it (up to 5 s on a loaded machine), not a fixed 50 ms.
  for (let waited = 0; uncaptured.length === before && waited < 5000; waited += 20) await new Promise((r) => setTimeout(r, 20));
  t.equal(uncaptured.length, before + 1, 'the app\'s handler got its own error');
  uncaptured.length = before;
  // A read issued before dispose() still gets its data.
  const last = scale(x, 5).read();
  const disposed = engine.dispose();
  t.same(Array.from(await last), [5, 10, 15, 20]);
  await disposed;
});

t.test("reads larger together than one staging buffer may hold go in groups; toBuffer refuses a usage WebGPU forbids", async (t) => {
  const engine = await createEngine({ device });
  t.equal(device.limits.maxBufferSize, 256 << 20, "the app's device has WebGPU's default limits");
  const before = uncaptured.length;
  // Three 96 MiB tensors: one 288 MiB staging buffer was asked for, the batch dropped, and each read then gave zeros.
  const n = (96 << 20) / 4;
  const tensors = [1, 2, 3].map((v) => engine.tensor(new Float32Array(n).fill(v), [n], `t${v}`));
  const pending = engine.readTensors(tensors);
  // What the caller writes after the call is not what it asked for: the third tensor's group was
  // copied only after the first group's wait, and read the 9s.
  engine.writeBuffer(tensors[2].buffer, 0, new Float32Array(n).fill(9));
  const parts = await pending;
  t.same(parts.map((p) => [p.length, p[0], p[n - 1]]), [[n, 1, 1], [n, 2, 2], [n, 3, 3]]);
  t.throws(() => engine.toBuffer(tensors[0], GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_SRC), /toBuffer: usage \d+ combines MAP_READ with other usages; WebGPU allows MAP_READ with COPY_DST only/);
  for (const x of tensors) x.dispose();
  await engine.dispose();
  t.equal(uncaptured.length, before, "no error reached the app's handler");
});

// The pool's and the staging ring's own allocations were outside the engine's error scopes: an
// out-of-memory there went to the app's handler, and the engine's read named only the dropped batch.
t.test("an allocation of the engine's that fails is the engine's error, not the app's", async (t) => {
  // The app's device, except that buffers of one label are made invalid (as an out-of-memory makes
  // them): a tensor's buffer from the pool, then the staging ring's readback buffer (whose mapping
  // then fails as well).
  // And an upload staging buffer, whose remapping after its submit reported an error of its own.
  for (const [poison, label] of [['poisoned', 'poisoned'], ['difrep readback', 'x'], ['difrep upload', 'x']] as const) {
    const device2 = new Proxy(device, {
      get(target, key) {
        if (key === 'createBuffer') {
          return (d: GPUBufferDescriptor) => target.createBuffer(d.label?.includes(poison) ? { ...d, usage: d.usage | GPUBufferUsage.MAP_READ | GPUBufferUsage.MAP_WRITE } : d);
        }
        const v = Reflect.get(target, key);
        return typeof v === 'function' ? v.bind(target) : v;
      },
    });
    const before = uncaptured.length;
    const engine = await createEngine({ device: device2 });
    const x = poison === 'difrep upload' ? engine.tensor(new Float32Array(1024), [1024], label) : engine.zeros([1024], label);
    await t.rejects(x.read(), new RegExp(poison), `${poison}: the read names the buffer that could not be made`);
    await new Promise((r) => setTimeout(r, 200)); // an uncaptured error would have arrived by now
    t.same(uncaptured.slice(before), [], `${poison}: the app's handler saw nothing`);
    uncaptured.length = before;
    await engine.dispose().catch(() => {});
  }
});

// The profiler's query set and its resolve and readback buffers were made outside the engine's
// error scopes: an allocation there that failed went to the app's handler.
t.test("a profiler allocation that fails is the engine's error, not the app's", async (t) => {
  const timed = await (await gpu.requestAdapter())!.requestDevice({ label: 'app device with timestamps', requiredFeatures: ['timestamp-query'] });
  const seen: string[] = [];
  timed.onuncapturederror = (ev: GPUUncapturedErrorEvent) => seen.push(ev.error.message);
  const poisoned = new Proxy(timed, {
    get(target, key) {
      if (key === 'createBuffer') {
        return (d: GPUBufferDescriptor) => target.createBuffer(d.label?.includes('profiler') ? { ...d, usage: d.usage | GPUBufferUsage.MAP_WRITE } : d);
      }
      const v = Reflect.get(target, key);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
  const engine = await createEngine({ device: poisoned });
  engine.startProfiling();
  const x = engine.tensor([1, 2, 3, 4], [4], 'x');
  await t.rejects(ops.scale(x, 2).read(), /profiler/, 'the read names the buffer that could not be made');
  await t.rejects(engine.stopProfiling(), /profiler: 1 dispatches' timings were lost/, 'the report says its timings are incomplete');
  await new Promise((r) => setTimeout(r, 200)); // an uncaptured error would have arrived by now
  t.same(seen, [], "the app's handler saw nothing");
  await engine.dispose().catch(() => {});
  timed.destroy();
});
