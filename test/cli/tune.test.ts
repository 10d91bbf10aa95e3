// `difrep tune`: a bounded search over GEMM tiles whose result lands in the tuning cache, and the
// rule that a tuned tile only takes outputs that fill it.
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { homedir, tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { chooseGemmTiling, tilingWorkgroupBytes } from '../../kernels/matmul.wgsl.ts';
import { tilingCandidates, tuneKernels } from '../../src/cli/tune.ts';
import { adapterName, kernelStamp, tuningPath } from '../../src/cli/tuning-cache.ts';
import { testEngine } from '../helpers/check.ts';
import { runCli } from '../helpers/cli.ts';

const dir = await mkdtemp(join(tmpdir(), 'difrep-tune-'));
const path = join(dir, 'tuning.json');
process.env.DIFREP_TUNING = path;
t.teardown(async () => {
  delete process.env.DIFREP_TUNING;
  await rm(dir, { recursive: true });
});

t.test('a tuned tile takes the outputs that fill one of its tiles; narrower ones keep the per-shape rule', async (t) => {
  const tuned = { wgX: 8, wgY: 8, tm: 4, tn: 4, tk: 16 }; // 32 × 32 outputs per workgroup
  t.same(chooseGemmTiling(32, 32, 'lavapipe', tuned), tuned, '32 × 32 output');
  t.same(chooseGemmTiling(1024, 64, 'gpu', tuned), tuned, '1024 × 64 output');
  t.same(chooseGemmTiling(70, 13, 'lavapipe', tuned), chooseGemmTiling(70, 13, 'lavapipe'), '13 columns: the lavapipe rule');
  t.same(chooseGemmTiling(10, 100, 'gpu', tuned), chooseGemmTiling(10, 100, 'gpu'), '10 rows: the GPU rule');
  t.throws(() => chooseGemmTiling(64, 64, 'gpu', { wgX: 16, wgY: 16, tm: 16, tn: 16, tk: 32 }), /stages 65536 bytes of workgroup memory, over this device's 16384; re-run difrep tune/);
});

t.test('every candidate fits the device, and the search leaves the engine as it found it', async (t) => {
  const e = await testEngine();
  const candidates = tilingCandidates(e);
  t.ok(candidates.length > 8, `${candidates.length} candidates`);
  for (const c of candidates) {
    const ok = tilingWorkgroupBytes(c) <= e.limits.maxComputeWorkgroupStorageSize && c.wgX * c.wgY <= e.limits.maxComputeInvocationsPerWorkgroup
      && [c.wgX, c.wgY, c.tm, c.tn, c.tk].every((v) => Number.isInteger(Math.log2(v)) && (v >= 4 || v === c.wgY));
    if (!ok) t.fail(`candidate ${JSON.stringify(c)} does not fit or is not a power of two`);
  }
  e.tuning.rows = { threadPerRowFrom: 16 };
  const { results } = await tuneKernels(e, 5, () => {});
  t.same(e.tuning, { rows: { threadPerRowFrom: 16 } }, 'tuning restored');
  delete e.tuning.rows;
  t.same(results.map((r) => r.family), ['matmul', 'conv2d']);
  for (const r of results) t.ok(Number.isFinite(r.baseline) && r.baseline > 0, `${r.family} baseline ${r.baseline.toFixed(2)} GFLOP/s`);
});

t.test('difrep tune stores its adapter\'s entry; --dry-run stores nothing; a bad budget is a usage error', async (t) => {
  const dry = runCli(['tune', '--seconds', '5', '--dry-run']);
  t.equal(dry.status, 0, dry.stderr);
  t.match(dry.stdout, /matmul: built-in tiles \(.*\) [\d.]+ GFLOP\/s/);
  t.match(dry.stdout, /--dry-run: tuning cache left as it is/);
  t.notOk(existsSync(path), 'no cache written');
  const run = runCli(['tune', '--seconds', '5']);
  t.equal(run.status, 0, run.stderr);
  const stored = run.stdout.match(/stored for "(.*)" in /);
  t.ok(stored, run.stdout);
  const cache = JSON.parse(await readFile(path, 'utf8'));
  t.same(Object.keys(cache), [stored![1]], 'one entry, keyed by the adapter');
  const { kernels, ...families } = cache[stored![1]];
  t.equal(kernels, kernelStamp(), 'stamped with the kernels it timed');
  for (const [family, tiling] of Object.entries(families)) {
    t.ok(['matmul', 'conv2d'].includes(family), family);
    t.same(Object.keys(tiling as object).sort(), ['tk', 'tm', 'tn', 'wgX', 'wgY']);
  }
  const bad = runCli(['tune', '--seconds', '1']);
  t.equal(bad.status, 2, 'a usage error exits 2, as an unknown command does');
  t.match(bad.stderr, /difrep tune: --seconds must be a number ≥ 5 and ≤ 600, got "1"/);
});

// The cache is written only after the search: a folder that cannot take it failed a minute later.
// sysfs takes no new files, even from root (whom file modes do not stop), and reads as empty.
t.test('a tuning cache that cannot be written is refused before the search', { skip: !existsSync('/sys/kernel') && 'no sysfs at /sys' }, async (t) => {
  const unwritable = '/sys/difrep-tuning.json';
  process.env.DIFREP_TUNING = unwritable;
  try {
    const r = runCli(['tune', '--seconds', '5']);
    t.equal(r.status, 1, r.stderr);
    // One line, as the message says it: a plain Error's class ("Error: ") is not printed.
    t.match(r.stderr.split('\n')[0], /^difrep: kernel tuning cache \/sys\/difrep-tuning\.json \(DIFREP_TUNING\) cannot be written: [^:]+; set DIFREP_TUNING to a file in a writable folder, or pass --dry-run$/);
    t.match(r.stderr, /set DIFREP_TUNING to a file in a writable folder, or pass --dry-run/);
    t.notMatch(r.stdout, /GFLOP\/s/, 'nothing was searched');
  } finally {
    process.env.DIFREP_TUNING = path;
  }
});

t.test('an empty DIFREP_TUNING is unset: the cache in the home folder', async (t) => {
  process.env.DIFREP_TUNING = '';
  try {
    t.equal(tuningPath(), join(process.env.HOME || homedir(), '.cache', 'difrep', 'tuning.json'));
  } finally {
    process.env.DIFREP_TUNING = path;
  }
});

// The entry's settings set by hand stay beside the stored tiles, so the tiles are timed under them:
// with the subgroup GEMM turned off by hand, the baseline was still timed (and named) on it.
t.test('tune times the tiles under the settings the entry keeps beside them', async (t) => {
  const e = await testEngine();
  if (!e.subgroupMatmul) return void t.pass('no subgroup GEMM on this adapter');
  await writeFile(path, JSON.stringify({ [adapterName(e)]: { matmulSubgroup: { enabled: 0 } } }));
  const dry = runCli(['tune', '--seconds', '5', '--dry-run']);
  t.equal(dry.status, 0, dry.stderr);
  t.match(dry.stdout, /matmul: built-in tiles \(\d+×\d+ threads × \d+×\d+ outputs, k \d+\) [\d.]+ GFLOP\/s/, 'the register tiles, not the subgroup GEMM');
  await rm(path);
});
