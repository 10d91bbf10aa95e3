// Softmax and log-softmax over the last axis of a [rows, n] tensor: a workgroup per row, or a
// thread per row on CPU adapters (the RowParallelism of ./normalize.wgsl.ts).
import { wgsl } from 'wgsl-preprocessor/wgsl-preprocessor.js';
import type { KernelSource } from './kernel-source.ts';
import { type RowParallelism, rowReduction } from './normalize.wgsl.ts';

export const SOFTMAX_WORKGROUP = 64;

/** y = softmax(x) or log_softmax(x) per row, max-subtracted for stability. Bindings: x, y. */
export function softmaxKernel(log: boolean, mode: RowParallelism): KernelSource {
  const r = rowReduction(mode, SOFTMAX_WORKGROUP);
  return {
    key: `softmax.${log ? 'log' : 'plain'}.${mode}`,
    code: wgsl`${r.enable}
struct Params { rows: u32, n: u32 }
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
${r.decls}
${r.entry}
  if (row >= u.rows) { return; }
  let base = row * u.n;
  var m = -3.402823e38;
  for (var k = lane; k < u.n; k += ${r.stride}u) { m = max(m, x[base + k]); }
  m = rowMax(m, lane);
  var s = 0.0;
  for (var k = lane; k < u.n; k += ${r.stride}u) { s += exp(x[base + k] - m); }
  s = rowSum(s, lane);
#if ${log}
  let logS = log(s);
  for (var k = lane; k < u.n; k += ${r.stride}u) { y[base + k] = x[base + k] - m - logS; }
#else
  let inv = 1.0 / s;
  for (var k = lane; k < u.n; k += ${r.stride}u) { y[base + k] = exp(x[base + k] - m) * inv; }
#endif
}`,
  };
}

/**
 * Backward from the forward output y: softmax dx = y·(dy − Σ dy·y);
 * log-softmax dx = dy − exp(y)·Σ dy. Bindings: y, dy, dx.
 */
export function softmaxBackwardKernel(log: boolean, mode: RowParallelism): KernelSource {
  const r = rowReduction(mode, SOFTMAX_WORKGROUP);
  return {
    key: `softmaxBackward.${log ? 'log' : 'plain'}.${mode}`,
    code: wgsl`${r.enable}
struct Params { rows: u32, n: u32 }
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read> y: array<f32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;
${r.decls}
${r.entry}
  if (row >= u.rows) { return; }
  let base = row * u.n;
  var s = 0.0;
#if ${log}
  for (var k = lane; k < u.n; k += ${r.stride}u) { s += dy[base + k]; }
#else
  for (var k = lane; k < u.n; k += ${r.stride}u) { s += dy[base + k] * y[base + k]; }
#endif
  let total = rowSum(s, lane);
#if ${log}
  for (var k = lane; k < u.n; k += ${r.stride}u) { dx[base + k] = dy[base + k] - exp(y[base + k]) * total; }
#else
  for (var k = lane; k < u.n; k += ${r.stride}u) { dx[base + k] = y[base + k] * (dy[base + k] - total); }
#endif
}`,
  };
}
