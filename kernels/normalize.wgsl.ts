// Row normalisation x̂ = (x − mean) / sqrt(var + eps) over rows of D contiguous values (biased
// variance, two passes). LayerNorm, and GroupNorm on the autograd path, are this plus an affine map.
// Backward (per row, g = dL/dx̂):  dx = rstd · (g − mean(g) − x̂ · mean(g · x̂)).
import { wgsl } from 'wgsl-preprocessor/wgsl-preprocessor.js';
import type { KernelSource } from './kernel-source.ts';

export const NORMALIZE_WORKGROUP = 128;

/**
 * How the threads of a row-reduction kernel split the rows: `workgroup`, a workgroup of WG
 * threads per row combining partial sums in workgroup memory by a tree (GPUs without subgroups);
 * `subgroup`, the same workgroup per row, each subgroup summing its threads at once
 * (subgroupAdd) and every thread then adding up the subgroups' sums in subgroup_id order — two
 * barriers instead of 2·log2(WG) + 2, and the same order, so the same result, in every thread and
 * every run; `thread`, one thread per row summing it alone (CPU adapters such as lavapipe, where
 * each workgroup barrier costs more than the arithmetic). Either way the body reads `row`, starts
 * at `lane` and steps by `STRIDE`, and combines with `rowSum` (`rowSum4` for four sums at once, or
 * `rowMax`). The kernel puts `enable` first in its module. Dispatch: `workgroup` and `subgroup` →
 * one workgroup per row; `thread` → rows / THREAD_MODE_WORKGROUP.
 */
export type RowParallelism = 'workgroup' | 'subgroup' | 'thread';

/**
 * Rows per workgroup in `thread` mode. CPU adapters run a workgroup on one core, so few rows in
 * large workgroups leave cores idle (GroupNorm of 256 channels @64², 32 rows: one workgroup of 64
 * would use one of two cores); 16 is two AVX2 SIMD vectors of rows.
 */
export const THREAD_MODE_WORKGROUP = 8;

export function rowReduction(mode: RowParallelism, WG: number): { enable: string; decls: string; entry: string; stride: number } {
  if (mode === 'thread') {
    return {
      enable: '',
      decls: 'fn rowSum(v: f32, lane: u32) -> f32 { return v; }\nfn rowSum4(v: vec4<f32>, lane: u32) -> vec4<f32> { return v; }\nfn rowMax(v: f32, lane: u32) -> f32 { return v; }',
      entry: `@compute @workgroup_size(${THREAD_MODE_WORKGROUP})
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
  let row = gid.y * nwg.x * ${THREAD_MODE_WORKGROUP}u + gid.x;
  let lane = 0u;`,
      stride: 1,
    };
  }
  if (mode === 'subgroup') {
    // WebGPU's subgroups have at least 4 invocations, so a workgroup has at most WG / 4.
    const combine = (name: string, type: string, op: (a: string, b: string) => string, subgroupOp: string) => `fn ${name}(v: ${type}, lane: u32) -> ${type} {
  let s = ${subgroupOp}(v);
  if (subgroupLane == 0u) { ${name}Partials[subgroupIndex] = s; }
  workgroupBarrier();
  var r = ${name}Partials[0];
  for (var i = 1u; i < subgroupCount; i++) { r = ${op('r', `${name}Partials[i]`)}; }
  workgroupBarrier();
  return r;
}`;
    return {
      enable: 'enable subgroups;',
      decls: `var<private> subgroupIndex: u32;
var<private> subgroupCount: u32;
var<private> subgroupLane: u32;
var<workgroup> rowSumPartials: array<f32, ${WG / 4}>;
var<workgroup> rowSum4Partials: array<vec4<f32>, ${WG / 4}>;
var<workgroup> rowMaxPartials: array<f32, ${WG / 4}>;
${combine('rowSum', 'f32', (a, b) => `${a} + ${b}`, 'subgroupAdd')}
${combine('rowSum4', 'vec4<f32>', (a, b) => `${a} + ${b}`, 'subgroupAdd')}
${combine('rowMax', 'f32', (a, b) => `max(${a}, ${b})`, 'subgroupMax')}`,
      entry: `@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lane: u32,
        @builtin(subgroup_id) sgId: u32, @builtin(num_subgroups) sgCount: u32, @builtin(subgroup_invocation_id) sgLane: u32) {
  subgroupIndex = sgId;
  subgroupCount = sgCount;
  subgroupLane = sgLane;
  let row = wid.y * nwg.x + wid.x;`,
      stride: WG,
    };
  }
  return {
    enable: '',
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

/**
 * The row kernels' loads of `width` (1 or 4) values: their WGSL type, and the sum and maximum of a
 * load's components (shared by the GroupNorm and softmax kernels).
 */
export const vectorType = (width: number) => (width === 4 ? 'vec4<f32>' : 'f32');
export const componentSum = (width: number, v: string) => (width === 4 ? `dot(${v}, vec4(1.0))` : v);
export const componentMax = (width: number, v: string) => (width === 4 ? `max(max(${v}.x, ${v}.y), max(${v}.z, ${v}.w))` : v);

/**
 * Bindings: x, xhat, stats ([rows, 2]: mean, rstd). `width` 4: rows of a multiple of 4 values
 * read and written as vec4s (u.D then counts vec4s).
 */
export function normalizeRowsKernel(mode: RowParallelism, width: 1 | 4 = 1): KernelSource {
  const r = rowReduction(mode, NORMALIZE_WORKGROUP);
  const T = vectorType(width);
  return {
    key: `normalizeRows${width === 4 ? '.vec4' : ''}.${mode}`,
    code: wgsl`${r.enable}
struct Params { rows: u32, D: u32, eps: f32 }
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read_write> xhat: array<${T}>;
@group(0) @binding(3) var<storage, read_write> stats: array<f32>;
${r.decls}
${r.entry}
  if (row >= u.rows) { return; }
  let base = row * u.D;
  let values = f32(u.D * ${width}u);
  // Sums of x − x[0] (shifted data): exact-ish means even when |mean| ≫ std.
  let shift = x[base]${width === 4 ? '.x' : ''};
  var s = ${T}();
  for (var i = lane; i < u.D; i += ${r.stride}u) { s += x[base + i] - shift; }
  // The mean is kept as shift + offset (see kernels/groupnorm.wgsl.ts).
  let offset = rowSum(${componentSum(width, 's')}, lane) / values;
  var q = ${T}();
  for (var i = lane; i < u.D; i += ${r.stride}u) { let d = (x[base + i] - shift) - offset; q += d * d; }
  let rstd = inverseSqrt(rowSum(${componentSum(width, 'q')}, lane) / values + u.eps);
  for (var i = lane; i < u.D; i += ${r.stride}u) { xhat[base + i] = ((x[base + i] - shift) - offset) * rstd; }
  if (lane == 0u) { stats[2u * row] = shift + offset; stats[2u * row + 1u] = rstd; }
}`,
  };
}

/** Bindings: xhat, stats, g (dL/dx̂), dx. `width` as for normalizeRowsKernel. */
export function normalizeRowsBackwardKernel(mode: RowParallelism, width: 1 | 4 = 1): KernelSource {
  const r = rowReduction(mode, NORMALIZE_WORKGROUP);
  const T = vectorType(width);
  return {
    key: `normalizeRowsBackward${width === 4 ? '.vec4' : ''}.${mode}`,
    code: wgsl`${r.enable}
struct Params { rows: u32, D: u32 }
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read> xhat: array<${T}>;
@group(0) @binding(2) var<storage, read> stats: array<f32>;
@group(0) @binding(3) var<storage, read> g: array<${T}>;
@group(0) @binding(4) var<storage, read_write> dx: array<${T}>;
${r.decls}
${r.entry}
  if (row >= u.rows) { return; }
  let base = row * u.D;
  var sg = ${T}();
  var sgx = ${T}();
  for (var i = lane; i < u.D; i += ${r.stride}u) { sg += g[base + i]; sgx += g[base + i] * xhat[base + i]; }
  let meanG = rowSum(${componentSum(width, 'sg')}, lane) / f32(u.D * ${width}u);
  let meanGX = rowSum(${componentSum(width, 'sgx')}, lane) / f32(u.D * ${width}u);
  let rstd = stats[2u * row + 1u];
  for (var i = lane; i < u.D; i += ${r.stride}u) {
    dx[base + i] = rstd * (g[base + i] - meanG - xhat[base + i] * meanGX);
  }
}`,
  };
}
