// Run by device-instance.test.ts: an engine on difrep's own device gives the CPU adapter the cores
// as the CLI does (yieldCoresUnlessKept: DIFREP_KEEP_PRIORITY=1 keeps the priority), then runs a
// kernel long enough to measure; prints, as one JSON line, whether it yielded, this thread's nice
// value, and the nice value and CPU time of every thread that worked during the kernel's wait
// (/proc/self/task: Linux). With APP_DEVICE=1 the engine runs on a Dawn device the app made.
import { readdirSync, readFileSync } from 'node:fs';
import { getPriority } from 'node:os';
import { yieldCoresUnlessKept } from '../../../src/cli/cpu-priority.ts';
import { create, globals } from 'webgpu';
import { createEngine, ops } from '../../../src/index.ts';

/** Each thread's nice value and CPU ticks (user + system), from /proc/self/task/<tid>/stat. */
const threads = () => new Map(readdirSync('/proc/self/task').map((tid) => {
  const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return [tid, { ticks: Number(fields[11]) + Number(fields[12]), nice: Number(fields[16]) }] as const;
}));

async function appDevice() {
  const gpu = create([]);
  Object.assign(globalThis, globals, { dawn: gpu }); // Dawn's instance kept reachable while its device works
  const adapter = (await gpu.requestAdapter())!;
  return { device: await adapter.requestDevice(), adapter };
}
const e = await createEngine(process.env.APP_DEVICE === '1' ? await appDevice() : {});
const applied = await yieldCoresUnlessKept(e);
const a = e.tensor(Float32Array.from({ length: 512 * 512 }, (_, i) => (i % 7) - 3), [512, 512]);
await ops.matmul(a, a).read(); // compiled, and the adapter's threads at work once
const before = threads();
let c = a;
for (let i = 0; i < 12; i++) c = ops.matmul(c, a);
await c.read();
const after = threads();
const busy = [...after].map(([tid, s]) => ({ tid, nice: s.nice, ticks: s.ticks - (before.get(tid)?.ticks ?? 0) })).filter((s) => s.ticks > 0);
console.log(JSON.stringify({ applied, cpuAdapter: e.cpuAdapter, pid: process.pid, mainNice: getPriority(), busy }));
await e.dispose();
