// What an engine chooses depends on its device alone, not on what ran before it in the process, and
// engines share one Dawn instance. A device made by the app itself (not through difrep) used to get
// no `subgroup_id` language feature until some createEngine() had made a Dawn instance, so the same
// call chose other row kernels by what had run before (softmax differed in the last bits); and
// each createEngine() made a Dawn instance of its own, with its threads, for the process's life.
import { spawnSync } from 'node:child_process';
import t, { type Test } from 'tap';

/**
 * Runs a child script (test/engine/children/) and returns its stdout. The process that makes a
 * second Dawn instance beside the app's now and then dies in Mesa's lavapipe (a glibc assertion in
 * __pthread_tpp_change_priority, or SIGSEGV at exit: about 1 run in 20 here, before any of difrep's
 * code runs a kernel): a child killed by a signal is run again, up to three times, and said so.
 */
function runChild(t: Test, name: string, env: Record<string, string> = {}): string {
  const child = new URL(`./children/${name}`, import.meta.url).pathname;
  for (let attempt = 1; ; attempt++) {
    const r = spawnSync(process.execPath, ['--import', 'tsx', child], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
    if (r.signal && attempt < 3) {
      t.comment(`${name}: the child died by ${r.signal} in Dawn/lavapipe (${r.stderr.split('\n').find((l) => /Assertion|Segmentation/.test(l)) ?? 'no message'}); running it again`);
      continue;
    }
    if (r.status !== 0) throw new Error(`${name} exited with ${r.signal ?? r.status}: ${r.stderr}`);
    return r.stdout;
  }
}

t.test('an app\'s own device: the engine reads its language features from the device, before and after other engines; engines share one Dawn instance', async (t) => {
  const out = JSON.parse(runChild(t, 'own-device.ts').trim().split('\n').at(-1)!);
  const { chosen, whileAppErred, threads } = out as { chosen: Record<string, boolean>; whileAppErred: { chosen: boolean; appErrors: number }; threads: { start: number; end: number } };
  t.equal(chosen.before, chosen.own, 'the same choice as an engine on a device difrep made');
  t.equal(chosen.after, chosen.before);
  t.equal(whileAppErred.appErrors, 1, "an app error made while createEngine probed the device reached the app's handler");
  t.equal(whileAppErred.chosen, chosen.before, 'and the probe chose as without it');
  t.equal(chosen.before, chosen.deviceHasSubgroups, 'lavapipe and Dawn have subgroup_id wherever the device has subgroups');
  // An instance per engine added five threads each.
  t.ok(threads.end <= threads.start + 12, `${threads.start} threads before eight more engines, ${threads.end} after`);
});

t.test('an app\'s Dawn device without Dawn\'s globals is refused, saying how to install them (it was "GPUBufferUsage is not defined")', async (t) => {
  const out = runChild(t, 'no-globals.ts');
  t.match(out, /Error: createEngine: WebGPU's globals \(GPUBufferUsage, GPUMapMode, …\) are not defined in this runtime: with Dawn for Node, run `Object\.assign\(globalThis, \(await import\('webgpu'\)\)\.globals\)`/);
});

// Dawn's Node binding waits for GPU work by polling on the main thread with setImmediate, a busy
// loop that took the cores from lavapipe's threads (2.8 s of CPU in a 4.2 s wait on 2 cores). The
// CLI's main thread now runs at nice 19 on CPU adapters, the adapter's threads, made with the
// device before, at the priority they had: the threads that ran the kernels are the ones at nice 0.
t.test('on a CPU adapter the CLI\'s main thread yields the cores to the adapter\'s threads, which keep their priority; DIFREP_KEEP_PRIORITY=1 keeps it', { skip: process.platform === 'linux' ? false : '/proc/self/task is Linux\'s' }, async (t) => {
  type Out = { applied: boolean; cpuAdapter: boolean; pid: number; mainNice: number; busy: { tid: string; nice: number; ticks: number }[] };
  const out = JSON.parse(runChild(t, 'yield-cores.ts').trim().split('\n').at(-1)!) as Out;
  t.equal(out.applied, out.cpuAdapter, 'applied exactly on a CPU adapter');
  if (!out.cpuAdapter) return;
  t.equal(out.mainNice, 19, 'the main thread at nice 19');
  const workers = out.busy.filter((s) => s.tid !== String(out.pid) && s.ticks >= 5);
  t.ok(workers.length > 0 && workers.every((s) => s.nice === 0), `the threads that ran the kernels keep nice 0: ${JSON.stringify(out.busy)}`);
  const kept = JSON.parse(runChild(t, 'yield-cores.ts', { DIFREP_KEEP_PRIORITY: '1' }).trim().split('\n').at(-1)!) as Out;
  t.same([kept.applied, kept.mainNice], [false, 0], 'DIFREP_KEEP_PRIORITY=1: the main thread keeps nice 0');
  // On a Dawn device the app made, difrep has no Dawn instance of its own: it yielded nothing.
  const app = JSON.parse(runChild(t, 'yield-cores.ts', { APP_DEVICE: '1' }).trim().split('\n').at(-1)!) as Out;
  t.same([app.applied, app.mainNice], [true, 19], 'on an app\'s Dawn device too');
});
