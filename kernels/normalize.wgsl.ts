// Row normalisation x̂ = (x − mean) / sqrt(var + eps) over rows of D contiguous values (biased
// variance, two passes). LayerNorm, and GroupNorm on the autograd path, are this plus an affine map.
// Backward (per row, g = dL/dx̂):  dx = rstd · (g − mean(g) − x̂ · mean(g · x̂)).
import { wgsl } from 'wgsl-preprocessor/wgsl-preprocessor.js';
import type { KernelSource } from '../src/engine/kernel-registry.ts';

export const NORMALIZE_WORKGROUP = 128;

const WORKGROUP_SUM = (WG: number) => /* wgsl */ `
var<workgroup> scratch: array<f32, ${WG}>;
fn workgroupSum(v: f32, lid: u32) -> f32 {
  scratch[lid] = v;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) { scratch[lid] += scratch[lid + s]; }
    workgroupBarrier();
  }
  let r = scratch[0];
  workgroupBarrier();
  return r;
}`;

/** One workgroup per row. Bindings: x, xhat, stats ([rows, 2]: mean, rstd). */
export function normalizeRowsKernel(): KernelSource {
  const WG = NORMALIZE_WORKGROUP;
  return {
    key: 'normalizeRows',
    code: wgsl`
struct Params { rows: u32, D: u32, eps: f32 }
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> xhat: array<f32>;
@group(0) @binding(3) var<storage, read_write> stats: array<f32>;
${WORKGROUP_SUM(WG)}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wid.y * nwg.x + wid.x;
  if (row >= u.rows) { return; }
  let base = row * u.D;
  // Sums of x − x[0] (shifted data): exact-ish means even when |mean| ≫ std.
  let shift = x[base];
  var s = 0.0;
  for (var i = lid; i < u.D; i += ${WG}u) { s += x[base + i] - shift; }
  // The mean is kept as shift + offset (see kernels/groupnorm.wgsl.ts).
  let offset = workgroupSum(s, lid) / f32(u.D);
  var q = 0.0;
  for (var i = lid; i < u.D; i += ${WG}u) { let d = (x[base + i] - shift) - offset; q += d * d; }
  let rstd = inverseSqrt(workgroupSum(q, lid) / f32(u.D) + u.eps);
  for (var i = lid; i < u.D; i += ${WG}u) { xhat[base + i] = ((x[base + i] - shift) - offset) * rstd; }
  if (lid == 0u) { stats[2u * row] = shift + offset; stats[2u * row + 1u] = rstd; }
}`,
  };
}

/** One workgroup per row. Bindings: xhat, stats, g (dL/dx̂), dx. */
export function normalizeRowsBackwardKernel(): KernelSource {
  const WG = NORMALIZE_WORKGROUP;
  return {
    key: 'normalizeRowsBackward',
    code: wgsl`
struct Params { rows: u32, D: u32 }
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read> xhat: array<f32>;
@group(0) @binding(2) var<storage, read> stats: array<f32>;
@group(0) @binding(3) var<storage, read> g: array<f32>;
@group(0) @binding(4) var<storage, read_write> dx: array<f32>;
${WORKGROUP_SUM(WG)}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wid.y * nwg.x + wid.x;
  if (row >= u.rows) { return; }
  let base = row * u.D;
  var sg = 0.0;
  var sgx = 0.0;
  for (var i = lid; i < u.D; i += ${WG}u) { sg += g[base + i]; sgx += g[base + i] * xhat[base + i]; }
  let meanG = workgroupSum(sg, lid) / f32(u.D);
  let meanGX = workgroupSum(sgx, lid) / f32(u.D);
  let rstd = stats[2u * row + 1u];
  for (var i = lid; i < u.D; i += ${WG}u) {
    dx[base + i] = rstd * (g[base + i] - meanG - xhat[base + i] * meanGX);
  }
}`,
  };
}
