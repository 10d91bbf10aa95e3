// Run by device-instance.test.ts: an app that makes its own Dawn device before any difrep engine
// exists, then engines on it and on difrep's own device; prints what they chose and the thread
// counts around eight more engines, as one JSON line.
import { readdirSync } from 'node:fs';
import { create, globals } from 'webgpu';
import { createEngine } from '../../../src/index.ts';

Object.assign(globalThis, globals);
process.env.XDG_RUNTIME_DIR ??= '/tmp';
const gpu = create([]);
const adapter = (await gpu.requestAdapter())!;
const device = await adapter.requestDevice({ requiredFeatures: adapter.features.has('subgroups') ? ['subgroups'] : [] });
const threads = () => readdirSync('/proc/self/task').length;

const before = await createEngine({ device, adapter });
const own = await createEngine();
const after = await createEngine({ device, adapter });
const chosen = { before: before.subgroupReductions, own: own.subgroupReductions, after: after.subgroupReductions, deviceHasSubgroups: device.features.has('subgroups') };
for (const engine of [before, own, after]) await engine.dispose();

// The app's own call while createEngine probes the device: the probe's error scope caught its error
// (the app's handler never saw it) and the probe then failed, so the engine chose other kernels.
const appErrors: string[] = [];
device.onuncapturederror = (ev: GPUUncapturedErrorEvent) => appErrors.push(ev.error.message);
const pending = createEngine({ device, adapter });
device.createBuffer({ size: 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.STORAGE, label: 'app mistake while probing' });
const probed = await pending;
for (let waited = 0; appErrors.length === 0 && waited < 5000; waited += 20) await new Promise((r) => setTimeout(r, 20));
const whileAppErred = { chosen: probed.subgroupReductions, appErrors: appErrors.length };
await probed.dispose();

await (await createEngine()).dispose();
// A destroyed device keeps one thread until it is garbage-collected; an instance of its own added five.
const start = threads();
for (let i = 0; i < 8; i++) await (await createEngine()).dispose();
console.log(JSON.stringify({ chosen, whileAppErred, threads: { start, end: threads() } }));
device.destroy();
