// `difrep tune`: a bounded search (60 s by default) over the register tiles of the GEMM kernels on
// this adapter — family `matmul` (matmul and the Winograd conv's GEMMs) timed on 1024³, family
// `conv2d` (the direct conv's implicit GEMM, its data and weight gradients) on a 3×3 conv
// 256→256 @32² — with each family's built-in choice timed first as the baseline. A family's winner
// is stored only if, timed again alternately with the baseline, it still beats it by 5 %; it then
// replaces the built-in choice for every output that fills one of its tiles (chooseGemmTiling). The cache (./tuning-cache.ts) is keyed by
// adapter and driver, and every command applies it.
import { chooseGemmTiling, type MatmulTiling, tilingWorkgroupBytes } from '../../kernels/matmul.wgsl.ts';
import { createEngine, type Engine } from '../engine/engine.ts';
import * as ops from '../engine/ops/index.ts';
import type { Tuning } from '../engine/tuning.ts';
import { gaussianNoise } from '../model/diffusion.ts';
import { compareArrays } from '../model/parity.ts';
import { yieldCoresUnlessKept } from './cpu-priority.ts';
import { type OptionSpecs, parseArgs } from './args.ts';
import { adapterName, checkTuningWritable, handSetTuning, readTuningCache, storeTuning, tuningPath } from './tuning-cache.ts';

const OPTIONS = {
  seconds: { type: 'number', min: 5, max: 600, help: 'time budget of the whole search, split evenly between the two kernel families', default: 60 },
  'dry-run': { type: 'flag', help: 'search and print, but leave the tuning cache as it is' },
} satisfies OptionSpecs;

/** A winner must beat the built-in choice by this factor: less is within the timing noise. */
const MIN_GAIN = 1.05;
/** The share of each family's time kept for the confirmation. */
const CONFIRM_SHARE = 0.2;

/**
 * Tilings worth timing on this adapter, likeliest first: CPU adapters run a workgroup's threads as
 * SIMD lanes and want few threads with large register tiles; GPUs want 64–256 threads with 4×4 to
 * 8×8 outputs each. All sizes are powers of two (the conv kernels' slab fill needs them) and
 * multiples of 4 (the vec4 matmul), within the device's workgroup limits; SwiftShader, whose JIT
 * loses the device on 16 × 16 outputs per thread, never gets those.
 */
export function tilingCandidates(e: Engine): MatmulTiling[] {
  const cpu = e.cpuAdapter;
  const threads: [number, number][] = cpu ? [[4, 4], [4, 2], [8, 4], [8, 8]] : [[16, 16], [16, 8], [8, 8], [32, 8], [8, 16]];
  const perThread: [number, number][] = cpu ? [[16, 16], [8, 16], [8, 8], [16, 8], [4, 4]] : [[4, 4], [8, 4], [4, 8], [8, 8]];
  const out: MatmulTiling[] = [];
  for (const tk of cpu ? [32, 16] : [16, 8, 32]) {
    for (const [tm, tn] of perThread) {
      if (e.adapterClass === 'swiftshader' && (tm === 16 || tn === 16)) continue;
      for (const [wgX, wgY] of threads) {
        const t = { wgX, wgY, tm, tn, tk };
        const fits = tilingWorkgroupBytes(t) <= e.limits.maxComputeWorkgroupStorageSize
          && wgX * wgY <= e.limits.maxComputeInvocationsPerWorkgroup
          && wgX <= e.limits.maxComputeWorkgroupSizeX && wgY <= e.limits.maxComputeWorkgroupSizeY;
        if (fits) out.push(t);
      }
    }
  }
  return out;
}

export interface FamilyResult {
  family: 'matmul' | 'conv2d';
  /** GFLOP/s of the built-in choice. */
  baseline: number;
  best: { tiling: MatmulTiling; gflops: number } | null;
  tried: number;
  of: number;
}

/** Median GFLOP/s of `run` (after one compiling call): three calls, or fewer when `deadline` (ms) comes first. */
async function rate(e: Engine, run: () => void, flops: number, deadline: number): Promise<number> {
  const once = async () => {
    const t0 = performance.now();
    e.tidy(() => void run());
    await e.sync();
    return performance.now() - t0;
  };
  await once();
  const times: number[] = [];
  do times.push(await once()); while (times.length < 3 && performance.now() < deadline);
  times.sort((a, b) => a - b);
  return flops / (times[Math.floor(times.length / 2)] * 1e6);
}

/**
 * Times the built-in choice and then candidates of each family until its share of `seconds` is
 * spent. Returns the tuning to store (families whose winner beat the baseline by MIN_GAIN) and
 * what was measured. Leaves `e.tuning` as it found it.
 */
export async function tuneKernels(e: Engine, seconds: number, log: (line: string) => void): Promise<{ tuning: Tuning; results: FamilyResult[] }> {
  const a = e.tensor(gaussianNoise(1024 * 1024, 1), [1024, 1024]);
  const b = e.tensor(gaussianNoise(1024 * 1024, 2), [1024, 1024]);
  const x = e.tensor(gaussianNoise(256 * 32 * 32, 3), [1, 256, 32, 32]);
  const w = e.tensor(gaussianNoise(256 * 256 * 9, 4), [256, 256, 3, 3]);
  const maxBytes = e.limits.maxComputeWorkgroupStorageSize;
  const families = [
    // On lavapipe the built-in matmul and direct conv run on the subgroup GEMM; a stored tiling replaces it.
    { family: 'matmul' as const, run: () => ops.matmul(a, b), flops: 2 * 1024 ** 3, builtIn: chooseGemmTiling(1024, 1024, e.gemmPresets, undefined, maxBytes) },
    // The direct GEMM (256 output channels × 1024 pixels), also where Winograd would take this shape (lavapipe).
    {
      family: 'conv2d' as const, run: () => ops.conv2d(x, w), flops: 2 * 256 * 256 * 9 * 1024,
      builtIn: chooseGemmTiling(256, 1024, e.gemmPresets, undefined, maxBytes), tuning: { conv2dWinograd: { enabled: 0 } },
    },
  ];
  const saved = structuredClone(e.tuning);
  // Measured under the settings that stay beside the stored tiles (set by hand: matmulSubgroup, …),
  // as every command will run them.
  const handSet: Tuning = Object.fromEntries(Object.entries(saved).filter(([family]) => family !== 'matmul' && family !== 'conv2d'));
  const setTuning = (t: Tuning) => e.setTuning({ ...handSet, ...t });
  const tuning: Tuning = {};
  const results: FamilyResult[] = [];
  const start = performance.now();
  try {
    for (const [i, f] of families.entries()) {
      // Family i ends at its share of the budget (time one overran comes out of the next); the
      // last CONFIRM_SHARE of it re-times the baseline and the best candidate.
      const end = start + ((i + 1) * seconds * 1000) / families.length;
      const searchEnd = end - (CONFIRM_SHARE * seconds * 1000) / families.length;
      setTuning(f.tuning ?? {});
      const subgroup = e.subgroupMatmul;
      // Every tiling is a candidate against the subgroup GEMM; against built-in tiles, the others.
      const candidates = tilingCandidates(e).filter((c) => subgroup || JSON.stringify(c) !== JSON.stringify(f.builtIn));
      const expected = await e.tidy(() => e.keep(f.run())).readAndDispose();
      let t0 = performance.now();
      const baseline = await rate(e, f.run, f.flops, searchEnd);
      let cost = performance.now() - t0;
      log(`${f.family}: built-in tiles (${subgroup ? 'the subgroup GEMM' : describeTiling(f.builtIn)}) ${baseline.toFixed(2)} GFLOP/s`);
      const result: FamilyResult = { family: f.family, baseline, best: null, tried: 0, of: candidates.length };
      for (const c of candidates) {
        // Start a candidate only if one more, at the cost of the last, ends in time.
        if (performance.now() + cost > searchEnd) break;
        e.tuning[f.family] = { ...c };
        t0 = performance.now();
        // A tiling a driver miscompiles must never be stored: its output is checked first.
        // (max |a − b| over max |b|: the same inputs, another summation order.)
        const check = compareArrays(`${f.family} ${describeTiling(c)}`, await e.tidy(() => e.keep(f.run())).readAndDispose(), expected, 1e-4);
        const gflops = check.pass ? await rate(e, f.run, f.flops, searchEnd) : 0;
        cost = performance.now() - t0;
        result.tried++;
        log(check.pass ? `  ${f.family} ${describeTiling(c)}: ${gflops.toFixed(2)} GFLOP/s` : `  ${f.family} ${describeTiling(c)}: WRONG RESULTS (${check.maxRel.toExponential(2)} off the built-in kernel's), left out`);
        if (gflops > 0 && (!result.best || gflops > result.best.gflops)) result.best = { tiling: c, gflops };
      }
      if (result.best && result.best.gflops >= MIN_GAIN * baseline) {
        // A search keeps its luckiest timing: time both again, alternately, and keep the winner
        // only if it still leads by MIN_GAIN.
        const again = { baseline: 0, best: 0 };
        for (let round = 0; round < 2; round++) {
          delete e.tuning[f.family];
          again.baseline = Math.max(again.baseline, await rate(e, f.run, f.flops, end));
          e.tuning[f.family] = { ...result.best.tiling };
          again.best = Math.max(again.best, await rate(e, f.run, f.flops, end));
        }
        log(`  ${f.family} confirmation: built-in ${again.baseline.toFixed(2)}, ${describeTiling(result.best.tiling)} ${again.best.toFixed(2)} GFLOP/s`);
        result.baseline = again.baseline;
        result.best.gflops = again.best;
        if (again.best >= MIN_GAIN * again.baseline) tuning[f.family] = result.best.tiling;
      }
      results.push(result);
    }
  } finally {
    setTuning(saved);
    for (const t of [a, b, x, w]) t.dispose();
  }
  return { tuning, results };
}

const describeTiling = (t: MatmulTiling) => `${t.wgX}×${t.wgY} threads × ${t.tm}×${t.tn} outputs, k ${t.tk}`;

export async function tuneCommand(argv: string[]): Promise<number> {
  const o = parseArgs('tune', argv, OPTIONS);
  if (!o) return 0;
  const e = await createEngine();
  await yieldCoresUnlessKept(e); // timed as every command runs (tunedEngine)
  try {
    const adapter = adapterName(e);
    // A file that is not a cache fails now, not after the search; the entry's settings set by hand
    // (kept beside the tiles stored) are in force while the tiles are timed.
    e.setTuning(handSetTuning(await readTuningCache(adapter), adapter));
    if (!o['dry-run']) await checkTuningWritable();
    console.log(`difrep tune: ${adapter}, ${o.seconds} s budget`);
    const t0 = performance.now();
    const { tuning, results } = await tuneKernels(e, o.seconds, (line) => console.log(line));
    for (const r of results) {
      const verdict = tuning[r.family]
        ? `${describeTiling(r.best!.tiling)}, ${r.best!.gflops.toFixed(2)} vs ${r.baseline.toFixed(2)} GFLOP/s built in`
        : `built-in tiles kept (${r.baseline.toFixed(2)} GFLOP/s; best of ${r.tried} candidates ${r.best ? r.best.gflops.toFixed(2) : '–'})`;
      console.log(`${r.family}: ${verdict}; ${r.tried} of ${r.of} candidates timed`);
    }
    console.log(`searched for ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    if (o['dry-run']) console.log('--dry-run: tuning cache left as it is');
    else {
      await storeTuning(adapter, tuning);
      console.log(`stored for "${adapter}" in ${tuningPath()}${Object.keys(tuning).length ? '' : ' (no overrides: the built-in tiles stand)'}`);
    }
    return 0;
  } finally {
    e.dispose();
  }
}
