// Softmax and log-softmax over the last axis of a [rows, n] tensor, one workgroup per row.
import { wgsl } from 'wgsl-preprocessor/wgsl-preprocessor.js';
import type { KernelSource } from '../src/engine/kernel-registry.ts';

export const SOFTMAX_WORKGROUP = 64;

/** y = softmax(x) or log_softmax(x) per row, max-subtracted for stability. Bindings: x, y. */
export function softmaxKernel(log: boolean): KernelSource {
  const WG = SOFTMAX_WORKGROUP;
  return {
    key: `softmax.${log ? 'log' : 'plain'}`,
    code: wgsl`
struct Params { rows: u32, n: u32 }
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
var<workgroup> scratch: array<f32, ${WG}>;

fn reduceMax(v: f32, lid: u32) -> f32 {
  scratch[lid] = v;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) { scratch[lid] = max(scratch[lid], scratch[lid + s]); }
    workgroupBarrier();
  }
  let r = scratch[0];
  workgroupBarrier();
  return r;
}

fn reduceSum(v: f32, lid: u32) -> f32 {
  scratch[lid] = v;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) { scratch[lid] += scratch[lid + s]; }
    workgroupBarrier();
  }
  let r = scratch[0];
  workgroupBarrier();
  return r;
}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wid.y * nwg.x + wid.x;
  if (row >= u.rows) { return; }
  let base = row * u.n;
  var m = -3.402823e38;
  for (var k = lid; k < u.n; k += ${WG}u) { m = max(m, x[base + k]); }
  m = reduceMax(m, lid);
  var s = 0.0;
  for (var k = lid; k < u.n; k += ${WG}u) { s += exp(x[base + k] - m); }
  s = reduceSum(s, lid);
#if ${log}
  let logS = log(s);
  for (var k = lid; k < u.n; k += ${WG}u) { y[base + k] = x[base + k] - m - logS; }
#else
  let inv = 1.0 / s;
  for (var k = lid; k < u.n; k += ${WG}u) { y[base + k] = exp(x[base + k] - m) * inv; }
#endif
}`,
  };
}

/**
 * Backward from the forward output y: softmax dx = y·(dy − Σ dy·y);
 * log-softmax dx = dy − exp(y)·Σ dy. Bindings: y, dy, dx.
 */
export function softmaxBackwardKernel(log: boolean): KernelSource {
  const WG = SOFTMAX_WORKGROUP;
  return {
    key: `softmaxBackward.${log ? 'log' : 'plain'}`,
    code: wgsl`
struct Params { rows: u32, n: u32 }
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;
var<workgroup> scratch: array<f32, ${WG}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wid.y * nwg.x + wid.x;
  if (row >= u.rows) { return; }
  let base = row * u.n;
  var s = 0.0;
#if ${log}
  for (var k = lid; k < u.n; k += ${WG}u) { s += dy[base + k]; }
#else
  for (var k = lid; k < u.n; k += ${WG}u) { s += dy[base + k] * y[base + k]; }
#endif
  scratch[lid] = s;
  workgroupBarrier();
  for (var st = ${WG / 2}u; st > 0u; st >>= 1u) {
    if (lid < st) { scratch[lid] += scratch[lid + st]; }
    workgroupBarrier();
  }
  let total = scratch[0];
#if ${log}
  for (var k = lid; k < u.n; k += ${WG}u) { dx[base + k] = dy[base + k] - exp(y[base + k]) * total; }
#else
  for (var k = lid; k < u.n; k += ${WG}u) { dx[base + k] = y[base + k] * (dy[base + k] - total); }
#endif
}`,
  };
}
