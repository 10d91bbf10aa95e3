// What an engine chooses depends on its device alone, not on what ran before it in the process, and
// engines share one Dawn instance. A device made by the app itself (not through difrep) used to get
// no `subgroup_id` language feature until some createEngine() had made a Dawn instance, so the same
// call chose other row kernels by what had run before (softmax differed in the last bits); and
// each createEngine() made a Dawn instance of its own, with its threads, for the process's life.
import { execFileSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import t from 'tap';
import { create, globals } from 'webgpu';
import { createEngine } from '../../src/index.ts';

Object.assign(globalThis, globals);
process.env.XDG_RUNTIME_DIR ??= '/tmp';
const gpu = create([]);
const adapter = (await gpu.requestAdapter())!;
const device = await adapter.requestDevice({ requiredFeatures: adapter.features.has('subgroups') ? ['subgroups'] : [] });
const threads = () => readdirSync('/proc/self/task').length;

t.test('an app\'s own device: the engine reads its language features from the device, before and after other engines', async (t) => {
  const before = await createEngine({ device, adapter });
  const own = await createEngine();
  const after = await createEngine({ device, adapter });
  t.equal(before.subgroupReductions, own.subgroupReductions, 'the same choice as an engine on a device difrep made');
  t.equal(after.subgroupReductions, before.subgroupReductions);
  t.equal(before.subgroupReductions, device.features.has('subgroups'), 'lavapipe and Dawn have subgroup_id wherever the device has subgroups');
  for (const engine of [before, own, after]) engine.dispose();
});

t.test('engines share one Dawn instance: making more does not add threads', async (t) => {
  (await createEngine()).dispose();
  // A destroyed device keeps one thread until it is garbage-collected; an instance of its own added five.
  const start = threads();
  for (let i = 0; i < 8; i++) (await createEngine()).dispose();
  t.ok(threads() <= start + 12, `${start} threads before eight more engines, ${threads()} after`);
});

t.test('an app\'s Dawn device without Dawn\'s globals is refused, saying how to install them (it was "GPUBufferUsage is not defined")', async (t) => {
  const child = new URL('./children/no-globals.ts', import.meta.url).pathname;
  const out = execFileSync(process.execPath, ['--import', 'tsx', child], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  t.match(out, /Error: createEngine: WebGPU's globals \(GPUBufferUsage, GPUMapMode, …\) are not defined in this runtime: with Dawn for Node, run `Object\.assign\(globalThis, \(await import\('webgpu'\)\)\.globals\)`/);
});
