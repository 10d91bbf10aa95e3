// Row normalisation x̂ = (x − mean) / sqrt(var + eps) over rows of D contiguous values (biased
// variance, two passes). LayerNorm, and GroupNorm on the autograd path, are this plus an affine map.
// Backward (per row, g = dL/dx̂):  dx = rstd · (g − mean(g) − x̂ · mean(g · x̂)).
import { wgsl } from 'wgsl-preprocessor/wgsl-preprocessor.js';
import type { KernelSource } from '../src/engine/kernel-registry.ts';

export const NORMALIZE_WORKGROUP = 128;

/**
 * How the threads of a row-reduction kernel split the rows: `workgroup`, a workgroup of WG
 * threads per row combining partial sums in workgroup memory (GPUs); `thread`, one thread per row
 * summing it alone (CPU adapters such as lavapipe, where each workgroup barrier costs more than
 * the arithmetic). Either way the body reads `row`, starts at `lane` and steps by `STRIDE`, and
 * combines with `rowSum` (`rowSum4` for four sums at once, or `rowMax`). Dispatch: `workgroup` → one workgroup per row; `thread` →
 * rows/64.
 */
export type RowParallelism = 'workgroup' | 'thread';

export function rowReduction(mode: RowParallelism, WG: number): { decls: string; entry: string; stride: number } {
  if (mode === 'thread') {
    return {
      decls: 'fn rowSum(v: f32, lane: u32) -> f32 { return v; }\nfn rowSum4(v: vec4<f32>, lane: u32) -> vec4<f32> { return v; }\nfn rowMax(v: f32, lane: u32) -> f32 { return v; }',
      entry: `@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let row = gid.y * nwg.x * 64u + gid.x;
  let lane = 0u;`,
      stride: 1,
    };
  }
  return {
    decls: `var<workgroup> scratch: array<f32, ${WG}>;
fn rowSum(v: f32, lane: u32) -> f32 {
  scratch[lane] = v;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (lane < s) { scratch[lane] += scratch[lane + s]; }
    workgroupBarrier();
  }
  let r = scratch[0];
  workgroupBarrier();
  return r;
}
var<workgroup> scratch4: array<vec4<f32>, ${WG}>;
fn rowSum4(v: vec4<f32>, lane: u32) -> vec4<f32> {
  scratch4[lane] = v;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (lane < s) { scratch4[lane] += scratch4[lane + s]; }
    workgroupBarrier();
  }
  let r = scratch4[0];
  workgroupBarrier();
  return r;
}
fn rowMax(v: f32, lane: u32) -> f32 {
  scratch[lane] = v;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (lane < s) { scratch[lane] = max(scratch[lane], scratch[lane + s]); }
    workgroupBarrier();
  }
  let r = scratch[0];
  workgroupBarrier();
  return r;
}`,
    entry: `@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
  let row = wid.y * nwg.x + wid.x;`,
    stride: WG,
  };
}

/** Bindings: x, xhat, stats ([rows, 2]: mean, rstd). */
export function normalizeRowsKernel(mode: RowParallelism): KernelSource {
  const r = rowReduction(mode, NORMALIZE_WORKGROUP);
  return {
    key: `normalizeRows.${mode}`,
    code: wgsl`
struct Params { rows: u32, D: u32, eps: f32 }
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> xhat: array<f32>;
@group(0) @binding(3) var<storage, read_write> stats: array<f32>;
${r.decls}
${r.entry}
  if (row >= u.rows) { return; }
  let base = row * u.D;
  // Sums of x − x[0] (shifted data): exact-ish means even when |mean| ≫ std.
  let shift = x[base];
  var s = 0.0;
  for (var i = lane; i < u.D; i += ${r.stride}u) { s += x[base + i] - shift; }
  // The mean is kept as shift + offset (see kernels/groupnorm.wgsl.ts).
  let offset = rowSum(s, lane) / f32(u.D);
  var q = 0.0;
  for (var i = lane; i < u.D; i += ${r.stride}u) { let d = (x[base + i] - shift) - offset; q += d * d; }
  let rstd = inverseSqrt(rowSum(q, lane) / f32(u.D) + u.eps);
  for (var i = lane; i < u.D; i += ${r.stride}u) { xhat[base + i] = ((x[base + i] - shift) - offset) * rstd; }
  if (lane == 0u) { stats[2u * row] = shift + offset; stats[2u * row + 1u] = rstd; }
}`,
  };
}

/** Bindings: xhat, stats, g (dL/dx̂), dx. */
export function normalizeRowsBackwardKernel(mode: RowParallelism): KernelSource {
  const r = rowReduction(mode, NORMALIZE_WORKGROUP);
  return {
    key: `normalizeRowsBackward.${mode}`,
    code: wgsl`
struct Params { rows: u32, D: u32 }
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read> xhat: array<f32>;
@group(0) @binding(2) var<storage, read> stats: array<f32>;
@group(0) @binding(3) var<storage, read> g: array<f32>;
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;
${r.decls}
${r.entry}
  if (row >= u.rows) { return; }
  let base = row * u.D;
  var sg = 0.0;
  var sgx = 0.0;
  for (var i = lane; i < u.D; i += ${r.stride}u) { sg += g[base + i]; sgx += g[base + i] * xhat[base + i]; }
  let meanG = rowSum(sg, lane) / f32(u.D);
  let meanGX = rowSum(sgx, lane) / f32(u.D);
  let rstd = stats[2u * row + 1u];
  for (var i = lane; i < u.D; i += ${r.stride}u) {
    dx[base + i] = rstd * (g[base + i] - meanG - xhat[base + i] * meanGX);
  }
}`,
  };
}
