// GroupNorm over NCHW data, fused with what follows it in the ADM U-Net:
//   y = GN(x)·γ + β, then optionally ·(1 + scale[n,c]) + shift[n,c] (scale-shift norm, where
//   e = [scale | shift] is the ResBlock's [N, 2C] embedding projection), then optionally SiLU.
// One row per (image, group) — a workgroup per row on GPUs, a thread per row on CPU adapters (see
// rowReduction): a group's channels are contiguous in NCHW, so its values are one contiguous run
// of (C/G)·H·W floats. Statistics in f32, variance by a second pass over
// (x − mean)² (not E[x²] − E[x]², which cancels when |mean| ≫ std). This fused kernel is the
// inference path; with gradients, src/engine/ops/group-norm.ts composes differentiable ops.
import { wgsl } from 'wgsl-preprocessor/wgsl-preprocessor.js';
import type { KernelSource } from '../src/engine/kernel-registry.ts';
import { type RowParallelism, rowReduction } from './normalize.wgsl.ts';

export const GROUPNORM_WORKGROUP = 256;

export interface GroupNormVariant {
  scaleShift: boolean;
  silu: boolean;
}

/** Bindings: x, gamma, beta, y, then e ([N, 2C]) with scaleShift. */
export function groupNormKernel(v: GroupNormVariant, mode: RowParallelism): KernelSource {
  const r = rowReduction(mode, GROUPNORM_WORKGROUP);
  return {
    key: `groupNorm${v.scaleShift ? '.scaleShift' : ''}${v.silu ? '.silu' : ''}.${mode}`,
    code: wgsl`
struct Params { C: u32, HW: u32, groups: u32, eps: f32, rows: u32 }
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
#if ${v.scaleShift}
@group(0) @binding(5) var<storage, read> e: array<f32>;
#endif
${r.decls}
${r.entry}
  let ng = row;              // n · groups + g
  if (ng >= u.rows) { return; }
  let n = ng / u.groups;
  let g = ng % u.groups;
  let cpg = u.C / u.groups;
  let count = cpg * u.HW;
  let base = ng * count;     // == (n·C + g·cpg)·HW
  // Sums of x − x[0] (shifted data): exact-ish means even when |mean| ≫ std.
  let shift = x[base];
  var s = 0.0;
  for (var i = lane; i < count; i += ${r.stride}u) { s += x[base + i] - shift; }
  // The mean is kept as shift + offset: rounding shift + offset to one f32 would lose the
  // offset's low bits exactly when |mean| ≫ std.
  let offset = rowSum(s, lane) / f32(count);
  var q = 0.0;
  for (var i = lane; i < count; i += ${r.stride}u) {
    let d = (x[base + i] - shift) - offset;
    q += d * d;
  }
  let rstd = inverseSqrt(rowSum(q, lane) / f32(count) + u.eps);
  for (var i = lane; i < count; i += ${r.stride}u) {
    let c = g * cpg + i / u.HW;
    var r = ((x[base + i] - shift) - offset) * rstd * gamma[c] + beta[c];
#if ${v.scaleShift}
    r = r * (1.0 + e[n * 2u * u.C + c]) + e[n * 2u * u.C + u.C + c];
#endif
#if ${v.silu}
    r = r / (1.0 + exp(-r));
#endif
    y[base + i] = r;
  }
}`,
  };
}
