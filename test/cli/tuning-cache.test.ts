// The kernel tuning cache (what `difrep tune` stores): every CLI command's engine
// applies its adapter's entry, ignores other adapters', and a broken file is an error naming it.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import tap from 'tap';
import { adapterDescription, adapterName, kernelStamp, readTuningCache, storeTuning, tunedEngine } from '../../src/cli/tuning-cache.ts';
import { createEngine } from '../../src/engine/engine.ts';

const t = tap;
const dir = await mkdtemp(join(tmpdir(), 'difrep-tuning-'));
const path = join(dir, 'tuning.json');
process.env.DIFREP_TUNING = path;
t.teardown(async () => {
  delete process.env.DIFREP_TUNING;
  await rm(dir, { recursive: true });
});

t.test('no file: the built-in presets', async (t) => {
  t.same(await readTuningCache(), {});
  const e = await tunedEngine();
  t.same(e.tuning, {});
  await e.dispose();
});

t.test("the adapter's stored entry is applied, another adapter's is kept and not applied", async (t) => {
  const probe = await tunedEngine();
  const adapter = adapterName(probe);
  await probe.dispose();
  await writeFile(path, JSON.stringify({ 'some other GPU: 1.0': { matmul: { wgX: 16, wgY: 16, tm: 4, tn: 4, tk: 8 } } }));
  await storeTuning(adapter, { matmul: { wgX: 8, wgY: 8, tm: 4, tn: 4, tk: 16 } });
  const cache = await readTuningCache();
  t.same(Object.keys(cache).sort(), [adapter, 'some other GPU: 1.0'].sort(), 'storing one adapter keeps the others');
  const e = await tunedEngine();
  t.same(e.tuning, { matmul: { wgX: 8, wgY: 8, tm: 4, tn: 4, tk: 16 } });
  await e.dispose();
});

t.test('an entry that turns the subgroup GEMM off takes effect (it was read once, before the entry applied)', async (t) => {
  const probe = await tunedEngine();
  const adapter = adapterName(probe);
  const available = probe.subgroupMatmul;
  await probe.dispose();
  if (!available) return void t.pass('nothing to turn off: this adapter does not take the subgroup GEMM');
  await writeFile(path, JSON.stringify({ [adapter]: { matmulSubgroup: { enabled: 0 } } }));
  const e = await tunedEngine();
  t.equal(e.subgroupMatmul, false);
  e.setTuning({});
  t.equal(e.subgroupMatmul, true, 'and setTuning replaces the whole tuning');
  await e.dispose();
});

t.test('createEngine checks its tuning option the same way', async (t) => {
  await t.rejects(createEngine({ tuning: { rows: { threadPerRow: 1 } } as never }), /createEngine: option tuning → rows → threadPerRow: unknown setting \(known: threadPerRowFrom, subgroups\)/);
});

t.test('a broken cache is an error naming the file; a broken entry only for the adapter that uses it', async (t) => {
  const probe = await createEngine();
  const adapter = adapterName(probe);
  await probe.dispose();
  await writeFile(path, '{ not json');
  await t.rejects(readTuningCache(), new RegExp(`tuning cache ${path.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')} is not JSON .*delete it \\(\`difrep tune\` writes a new one\\)`));
  await t.rejects(tunedEngine(), /is not JSON/);
  // Another adapter's entry that this difrep cannot read (another version's setting) blocked every
  // command on every adapter, and `difrep tune` too: now it blocks nothing here and is kept.
  await writeFile(path, JSON.stringify({ 'other GPU: 1.0': { rows: { oldKey: 1 } } }));
  const e = await tunedEngine();
  t.same(e.tuning, {}, 'the built-in presets');
  await e.dispose();
  await storeTuning(adapter, { rows: { threadPerRowFrom: 16 } });
  t.same((await readTuningCache())['other GPU: 1.0'], { rows: { oldKey: 1 } }, 'the other entry kept as it was');
  for (const [entry, message] of [
    [{ matmul: { wgX: 'big' } }, /→ matmul → wgX is "big", not a whole number ≥ 1/],
    [{ matmull: { wgX: 8 } }, /→ matmull: unknown kernel family \(known: matmul, matmulSubgroup, conv2d, conv2dWinograd, conv2dWeightGrad, rows, reduce, attention\)/],
    [{ conv2dWinograd: { enable: 1 } }, /→ conv2dWinograd → enable: unknown setting \(known: enabled, minChannels\)/],
    [{ matmul: { tk: 0 } }, /→ matmul → tk is 0, not a whole number ≥ 1/],
    // A switch of 2 or 7 was taken as on; a NaN was reported as "null".
    [{ matmulSubgroup: { enabled: 2 } }, /→ matmulSubgroup → enabled is 2, not 0 \(off\) or 1 \(on\)/],
    [[1, 2], /is not an object of kernel families/],
  ] as const) {
    await writeFile(path, JSON.stringify({ [adapter]: entry }));
    const err = await tunedEngine().then((x) => (x.dispose(), null), (x: Error) => x);
    t.match(err?.message, message);
    t.match(err?.message, /the entry of this adapter \(".*"\).*delete that entry or fix it \(`difrep tune` rewrites only its matmul and conv2d tiles\)/);
  }
});

// Tiles tuned on one CPU were applied on another with the same Mesa (a home folder shared by a
// cluster's nodes): a CPU adapter's key names the CPU.
t.test("a CPU adapter's key names the CPU model and core count; a GPU's does not", async (t) => {
  const e = await createEngine();
  const name = adapterName(e);
  const cpu = `${cpus()[0].model.trim()} ×${cpus().length}`;
  if (e.cpuAdapter) t.ok(name.endsWith(` · ${cpu}`), `${name} names ${cpu}`);
  else t.notOk(name.includes(cpu), `${name} names no CPU`);
  t.ok(name.startsWith(e.handle.info.description || e.handle.info.vendor), 'and starts with the adapter');
  await e.dispose();
});

// A bare tuning, not keyed by adapter, was ignored without a word: every command ran on the
// built-in tiles while the user believed theirs were in use.
t.test('a cache holding kernel families at its top level (a bare tuning) is an error saying how to key it', async (t) => {
  await writeFile(path, JSON.stringify({ matmul: { wgX: 8 }, rows: { subgroups: 0 } }));
  const expected = /tuning cache .* "matmul", "rows" at its top level are kernel families, not an adapter's name, so no adapter would use them: .*\{"<adapter>": \{"matmul": \{…\}\}\}\); move them under /;
  await t.rejects(readTuningCache(), expected);
  await t.rejects(readTuningCache(), /move them under the adapter's name, or delete it/);
  const probe = await createEngine();
  const adapter = adapterName(probe);
  await probe.dispose();
  const err = await tunedEngine().then((x) => (x.dispose(), null), (x: Error) => x);
  t.match(err?.message, expected);
  t.ok(err?.message.includes(`move them under "${adapter}" (this adapter's name)`), 'the engine\'s message names this adapter\'s key');
  await writeFile(path, '{}');
});

// Keys without the CPU (an earlier difrep's) are not applied on a CPU adapter, and the user is told.
t.test("a CPU adapter's entry keyed without the CPU is not applied, and stderr says so", async (t) => {
  const probe = await createEngine();
  const [name, description] = [adapterName(probe), adapterDescription(probe)];
  await probe.dispose();
  if (name === description) return void t.pass('a GPU adapter: its key has no CPU');
  await writeFile(path, JSON.stringify({ [description]: { matmulSubgroup: { enabled: 0 } } }));
  const said: string[] = [];
  const error = console.error;
  console.error = (...args: unknown[]) => void said.push(args.join(' '));
  try {
    const e = await tunedEngine();
    t.same(e.tuning, {}, 'not applied');
    await e.dispose();
  } finally {
    console.error = error;
  }
  t.match(said.join('\n'), /is not applied: tiles are now kept per CPU model; run `difrep tune` again on this machine/);
  await writeFile(path, '{}');
});

t.test('DIFREP_TUNING naming a folder is an error naming the file and the variable', async (t) => {
  process.env.DIFREP_TUNING = dir;
  await t.rejects(readTuningCache(), { message: `kernel tuning cache ${dir} (DIFREP_TUNING) cannot be read: is a directory (EISDIR); it names a JSON file \`difrep tune\` writes` });
  process.env.DIFREP_TUNING = path;
});

t.test('storing what tune found replaces the adapter\'s matmul and conv2d tiles only, keeping its hand-set settings', async (t) => {
  const hand = { matmulSubgroup: { enabled: 0 }, attention: { fusedBackward: 1 } };
  await writeFile(path, JSON.stringify({ 'this GPU: 1.0': { ...hand, matmul: { wgX: 8, wgY: 8, tm: 8, tn: 8, tk: 16 } }, 'other GPU: 2.0': { rows: { subgroups: 0 } } }));
  // The search kept the built-in tiles: the stale matmul entry goes, the settings set by hand stay (they were all wiped).
  await storeTuning('this GPU: 1.0', {});
  t.same((await readTuningCache())['this GPU: 1.0'], { ...hand, kernels: kernelStamp() });
  await storeTuning('this GPU: 1.0', { conv2d: { wgX: 4, wgY: 4, tm: 8, tn: 8, tk: 16 } });
  t.same(await readTuningCache(), { 'this GPU: 1.0': { ...hand, conv2d: { wgX: 4, wgY: 4, tm: 8, tn: 8, tk: 16 }, kernels: kernelStamp() }, 'other GPU: 2.0': { rows: { subgroups: 0 } } });
  await rm(path);
});

/** What tunedEngine writes to stderr, and its engine's tuning. */
async function tunedWithNotes(): Promise<{ tuning: object; said: string }> {
  const said: string[] = [];
  const error = console.error;
  console.error = (...args: unknown[]) => void said.push(args.join(' '));
  try {
    const e = await tunedEngine();
    const tuning = structuredClone(e.tuning);
    await e.dispose();
    return { tuning, said: said.join('\n') };
  } finally {
    console.error = error;
  }
}

// A tile stored before the subgroup GEMM existed turned it off for good (512³ on lavapipe 15.5 → 37 ms).
t.test('tiles timed on other kernels are left out, with a line saying so; settings set by hand still apply', async (t) => {
  const probe = await createEngine();
  const adapter = adapterName(probe);
  await probe.dispose();
  const tiles = { matmul: { wgX: 8, wgY: 8, tm: 4, tn: 4, tk: 16 } };
  await writeFile(path, JSON.stringify({ [adapter]: { ...tiles, rows: { subgroups: 0 }, kernels: '0123456789abcdef' } }));
  const stale = await tunedWithNotes();
  t.same(stale.tuning, { rows: { subgroups: 0 } });
  t.match(stale.said, /the tiles in .* for this adapter were timed on other kernels \(another difrep version\): not applied; run `difrep tune` again/);
  await storeTuning(adapter, tiles);
  t.same((await tunedWithNotes()).tuning, { ...tiles, rows: { subgroups: 0 } }, 'stamped with these kernels: applied');
  await writeFile(path, JSON.stringify({ 'some other GPU: 1.0': tiles }));
  const none = await tunedWithNotes();
  t.same(none.tuning, {});
  t.match(none.said, /has no entry for this adapter \(".*"\): built-in kernel presets/, 'a driver upgrade renaming the adapter is not silent');
  await rm(path);
});

t.test('stores at once (tune runs on nodes sharing a home folder) keep every entry', async (t) => {
  await Promise.all(Array.from({ length: 12 }, (_, i) => storeTuning(`GPU ${i}`, { matmul: { wgX: 8, wgY: 8, tm: 4, tn: 4, tk: 8 + i } })));
  const cache = await readTuningCache();
  t.equal(Object.keys(cache).length, 12, 'all 12 entries (each read-edit-write dropped the others\' before)');
  t.same((cache['GPU 11'] as { matmul: object }).matmul, { wgX: 8, wgY: 8, tm: 4, tn: 4, tk: 19 });
  await rm(path);
});
