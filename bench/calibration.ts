// The adapter's own limits, measured by the harness: an FMA-bound kernel (independent vec4
// accumulators, no memory traffic) for the compute peak and a vec4 copy for the bandwidth peak.
// Both grow (more workgroups, more bytes) until the adapter is saturated — the throughput stops
// rising or one call takes long enough that launch overhead is noise — so a probe sized for a CPU
// adapter does not under-read a large GPU (a busy moment still can: such a row says so).
import { wgsl } from 'wgsl-preprocessor/wgsl-preprocessor.js';
import type { Engine } from '../src/engine/engine.ts';
import { uniformLayout } from '../kernels/uniform-layout.ts';
import { type Measurement, measure } from './measure.ts';

const FMA_ITERS = 256;
/**
 * FMAs of each chain per loop iteration: with one, lavapipe spends as much on the loop (counter,
 * branch, lane mask) as on the work, and the "peak" read half of what its FMA units do (30 against
 * 48–54 GFLOP/s unrolled; matmul then printed 55–62 % of a peak it reached a quarter of).
 */
export const FMA_UNROLL = 8;
/**
 * Independent vec4 accumulators per thread (instruction-level parallelism for the FMA units). The
 * best count differs: a GPU wants many, while CPU adapters keep each vec4 in four SIMD registers,
 * so 8 chains spill on a 16-register CPU. Every count is probed and the fastest is the peak.
 */
const CHAIN_COUNTS = [2, 4, 8];
/** A call this long makes dispatch and launch overhead negligible. */
const SATURATED_MS = 20;
/** Throughput that rose by less than this factor on doubling is taken as the peak. */
const PLATEAU = 1.05;

const FMA_PARAMS = uniformLayout({ seed: 'f32' });
const COPY_PARAMS = uniformLayout({ n: 'u32' });

function fmaPeakKernel(chains: number) {
  const CHAINS = [...Array(chains).keys()];
  return {
    key: `bench.fmaPeak.${chains}.x${FMA_UNROLL}`,
    params: FMA_PARAMS,
    code: wgsl`
${FMA_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read_write> out: array<vec4<f32>>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let m = vec4<f32>(0.9999);
  let k = vec4<f32>(0.0001);
  ${CHAINS.map((j) => `var a${j} = vec4<f32>(u.seed + ${j}.0, u.seed, u.seed * 0.5, f32(gid.x));`).join('\n  ')}
  for (var i = 0u; i < ${FMA_ITERS / FMA_UNROLL}u; i++) {
    ${[...Array(FMA_UNROLL).keys()].flatMap(() => CHAINS.map((j) => `a${j} = fma(a${j}, m, k);`)).join('\n    ')}
  }
  out[gid.y * nwg.x * 64u + gid.x] = ${CHAINS.map((j) => `a${j}`).join(' + ')};
}`,
  };
}

/**
 * How the copy probe's invocations share the vec4s: `perThread` each (CPU adapters pay per
 * invocation, so one vec4 each under-reads them, and a kernel that moves more per invocation
 * would print over 100 %; GPUs want many invocations), `strided` (each step contiguous across a
 * workgroup of 256, as GPUs coalesce) or `contiguous` (each invocation's own run, in workgroups of
 * 64: lavapipe's SIMD lanes then load whole cache lines; 6.7–8.0 against 5.5 GB/s strided). Every
 * configuration is probed and the fastest is the peak. Strided 8 each: on lavapipe 13.3 against 12.5
 * GB/s for 4 at the fastest, where Adam's kernel (4 loads an invocation of each of its 7 streams)
 * had read 102 % of the 4-each probe.
 */
const COPY_CONFIGS: CopyConfig[] = [
  { perThread: 1, layout: 'strided' }, { perThread: 4, layout: 'strided' }, { perThread: 8, layout: 'strided' }, { perThread: 16, layout: 'strided' },
  { perThread: 4, layout: 'contiguous' }, { perThread: 8, layout: 'contiguous' },
];

interface CopyConfig {
  perThread: number;
  layout: 'strided' | 'contiguous';
}
const COPY_WORKGROUP = { strided: 256, contiguous: 64 } as const;

/**
 * Strided: invocation lid of workgroup w copies vec4s w·256·k + j·256 + lid, j < k (each step
 * contiguous across the workgroup); contiguous: invocation g copies g·k + j. All k loads come
 * before the stores, under one bounds test, as a kernel with several inputs issues them: one load
 * then one store at a time read under Adam's seven accesses per value on lavapipe (7.29 against
 * 7.71 GB/s at the fastest, so Adam printed over 100 %), this way 8.21. The last invocations copy
 * one vec4 at a time.
 */
function copyKernel({ perThread, layout }: CopyConfig) {
  const J = [...Array(perThread).keys()];
  const wg = COPY_WORKGROUP[layout];
  const step = layout === 'strided' ? wg : 1;
  const first = layout === 'strided' ? `(wid.y * nwg.x + wid.x) * ${wg * perThread}u + lid` : `((wid.y * nwg.x + wid.x) * ${wg}u + lid) * ${perThread}u`;
  return {
    key: `bench.copy.${layout}.${perThread}`,
    params: COPY_PARAMS,
    code: wgsl`
${COPY_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<f32>>;
@compute @workgroup_size(${wg})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let first = ${first};
  if (first + ${step * (perThread - 1)}u < u.n) {
    ${J.map((j) => `let v${j} = src[first + ${step * j}u];`).join('\n    ')}
    ${J.map((j) => `dst[first + ${step * j}u] = v${j};`).join('\n    ')}
    return;
  }
  for (var j = 0u; j < ${perThread}u; j++) {
    let i = first + j * ${step}u;
    if (i < u.n) { dst[i] = src[i]; }
  }
}`,
  };
}

/** Which configuration of a probe read the peak: FMA chains and workgroups, or the copy's layout and bytes. */
export interface ProbeConfig {
  fma: { chains: number; groups: number };
  copy: CopyConfig & { bytes: number };
}

export interface Peaks {
  gflops: number;
  gbps: number;
  fma: Measurement;
  copy: Measurement;
  config: ProbeConfig;
}

/** Doubles `size` from `start` up to `max` while the throughput still rises and a call is short; returns the best and its size. */
async function saturate(start: number, max: number, probe: (size: number) => Promise<Measurement>, rate: (m: Measurement) => number): Promise<{ m: Measurement; size: number }> {
  let best = { m: await probe(start), size: start };
  for (let size = start * 2; size <= max; size *= 2) {
    if (best.m.medianMs >= SATURATED_MS) break;
    const m = await probe(size);
    const gain = rate(m) / rate(best.m);
    if (gain > 1) best = { m, size };
    if (gain < PLATEAU) break;
  }
  return best;
}

/**
 * A probe's rate at its fastest repetition, not its median: a ceiling must not sit below what a
 * kernel's median reaches on a noisy machine (two runs of the copy probe on one 2-core VM read
 * 2.9 and 4.1 GB/s by their medians).
 */
const best = (m: Measurement, medianRate: number) => (medianRate * m.medianMs) / m.minMs;

/** The FMA probe with `chains` accumulators in `groups` workgroups of 64 threads (a 2D grid past 65,535). */
async function fmaProbe(e: Engine, chains: number, groups: number, minSeconds: number): Promise<Measurement> {
  const grid: [number, number] = [Math.min(groups, 65535), Math.ceil(groups / 65535)];
  const threads = grid[0] * grid[1] * 64;
  const out = e.empty([threads * 4], 'bench.fma.out');
  // chains accumulators × 4 lanes × 2 flops per FMA.
  const flops = threads * FMA_ITERS * chains * 4 * 2;
  const r = await measure(e, () => e.dispatch({ kernel: fmaPeakKernel(chains), bindings: [out], params: { seed: 1 }, workgroups: grid }), { flops, minSeconds });
  out.dispose();
  return r;
}

/** The copy probe over `bytes` in configuration `config`. */
async function copyProbe(e: Engine, config: CopyConfig, bytes: number, minSeconds: number): Promise<Measurement> {
  const n = bytes / 16; // vec4
  const src = e.zeros([n * 4], 'bench.copy.src');
  const dst = e.empty([n * 4], 'bench.copy.dst');
  const groups = Math.ceil(n / (COPY_WORKGROUP[config.layout] * config.perThread));
  const r = await measure(e, () => e.dispatch({ kernel: copyKernel(config), bindings: [src, dst], params: { n }, workgroups: [Math.min(65535, groups), Math.ceil(groups / 65535)] }), { bytes: 2 * bytes, minSeconds });
  src.dispose();
  dst.dispose();
  return r;
}

export async function measurePeaks(e: Engine): Promise<Peaks> {
  const maxGroups = 65535 * Math.min(64, e.limits.maxComputeWorkgroupsPerDimension);
  let fma: { m: Measurement; size: number; chains: number } | undefined;
  for (const chains of CHAIN_COUNTS) {
    const r = await saturate(1024, maxGroups, (groups) => fmaProbe(e, chains, groups, 0.3), (m) => best(m, m.gflops!));
    if (!fma || best(r.m, r.m.gflops!) > best(fma.m, fma.m.gflops!)) fma = { ...r, chains };
  }
  // Copies of 64 MiB and up, while two such buffers fit one binding each.
  const maxBytes = Math.min(e.maxBindingBytes, 1 << 30);
  let copy: { m: Measurement; size: number; config: CopyConfig } | undefined;
  for (const config of COPY_CONFIGS) {
    const r = await saturate(64 << 20, maxBytes, (bytes) => copyProbe(e, config, bytes, 0.3), (m) => best(m, m.gbps!));
    if (!copy || best(r.m, r.m.gbps!) > best(copy.m, copy.m.gbps!)) copy = { ...r, config };
  }
  return {
    gflops: best(fma!.m, fma!.m.gflops!), gbps: best(copy!.m, copy!.m.gbps!), fma: fma!.m, copy: copy!.m,
    config: { fma: { chains: fma!.chains, groups: fma!.size }, copy: { ...copy!.config, bytes: copy!.size } },
  };
}

/**
 * The one probe a row is rated against, run again right after the row in the configuration that
 * read the peak: on a VM whose speed drifts by a third within minutes (FMA 32 → 43 GFLOP/s in one
 * run), a ceiling measured only before and after all rows can sit below a row's median (Adam once
 * printed 101 % of copy). Returns its best rate: GFLOP/s or GB/s.
 */
export async function probeAgain(e: Engine, config: ProbeConfig, kind: 'fma' | 'copy'): Promise<number> {
  if (kind === 'fma') {
    const m = await fmaProbe(e, config.fma.chains, config.fma.groups, 0.2);
    return best(m, m.gflops!);
  }
  const m = await copyProbe(e, config.copy, config.copy.bytes, 0.2);
  return best(m, m.gbps!);
}

/** Each ceiling from whichever of two probe runs read it higher. */
export function higherPeaks(a: Peaks, b: Peaks): Peaks {
  const fma = b.gflops > a.gflops ? b : a;
  const copy = b.gbps > a.gbps ? b : a;
  return { gflops: fma.gflops, fma: fma.fma, gbps: copy.gbps, copy: copy.copy, config: { fma: fma.config.fma, copy: copy.config.copy } };
}
