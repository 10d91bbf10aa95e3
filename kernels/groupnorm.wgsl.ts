// GroupNorm over NCHW data, fused with what follows it in the ADM U-Net:
//   y = GN(x)·γ + β, then optionally ·(1 + scale[n,c]) + shift[n,c] (scale-shift norm, where
//   e = [scale | shift] is the ResBlock's [N, 2C] embedding projection), then optionally SiLU.
// One row per (image, group) — a workgroup per row on GPUs, a thread per row on CPU adapters (see
// rowReduction): a group's channels are contiguous in NCHW, so its values are one contiguous run
// of (C/G)·H·W floats. Statistics in f32, variance by a second pass over
// (x − mean)² (not E[x²] − E[x]², which cancels when |mean| ≫ std).
//
// Backward (groupNormBackwardKernel), per row, recomputing the statistics and, elementwise,
//   x̂ = (x − mean)·rstd,  a = x̂·γ + β,  z = a·(1 + scale) + shift,  y = silu(z) or z:
//   dz = dy·silu'(z), silu'(z) = σ(z)·(1 + z·(1 − σ(z)));  da = dz·(1 + scale);  dx̂ = da·γ;
//   dx = rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂))   (means over the row);
//   and per image and channel, summed over H·W: dγ ← Σ da·x̂, dβ ← Σ da, dscale ← Σ dz·a,
//   dshift ← Σ dz (the op sums dγ and dβ over the images).
import { wgsl } from 'wgsl-preprocessor/wgsl-preprocessor.js';
import type { KernelSource } from './kernel-source.ts';
import { type RowParallelism, rowReduction } from './normalize.wgsl.ts';

export const GROUPNORM_WORKGROUP = 256;

export interface GroupNormVariant {
  scaleShift: boolean;
  silu: boolean;
}

/** The row statistics of both kernels: the mean kept as shift + offset, and rstd. */
function rowStatistics(stride: number): string {
  return `let n = ng / u.groups;
  let g = ng % u.groups;
  let cpg = u.C / u.groups;
  let count = cpg * u.HW;
  let base = ng * count;     // == (n·C + g·cpg)·HW
  // Sums of x − x[0] (shifted data): exact-ish means even when |mean| ≫ std.
  let shift = x[base];
  var s = 0.0;
  for (var i = lane; i < count; i += ${stride}u) { s += x[base + i] - shift; }
  // The mean is kept as shift + offset: rounding shift + offset to one f32 would lose the
  // offset's low bits exactly when |mean| ≫ std.
  let offset = rowSum(s, lane) / f32(count);
  var q = 0.0;
  for (var i = lane; i < count; i += ${stride}u) {
    let d = (x[base + i] - shift) - offset;
    q += d * d;
  }
  let rstd = inverseSqrt(rowSum(q, lane) / f32(count) + u.eps);`;
}

/** Bindings: x, gamma, beta, y, then e ([N, 2C]) with scaleShift. */
export function groupNormKernel(v: GroupNormVariant, mode: RowParallelism): KernelSource {
  const r = rowReduction(mode, GROUPNORM_WORKGROUP);
  return {
    key: `groupNorm${v.scaleShift ? '.scaleShift' : ''}${v.silu ? '.silu' : ''}.${mode}`,
    code: wgsl`${r.enable}
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
  ${rowStatistics(r.stride)}
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

/**
 * Bindings: x, gamma, beta, dy, dx, dAffine ([N, 2C]: Σ da·x̂ | Σ da per image and channel), then
 * e and dE ([N, 2C]: Σ dz·a | Σ dz) with scaleShift.
 */
export function groupNormBackwardKernel(v: GroupNormVariant, mode: RowParallelism): KernelSource {
  const r = rowReduction(mode, GROUPNORM_WORKGROUP);
  // Recomputes x̂ (xh), a, z and dz at flat index `idx` of channel `c`: the dz and da it names.
  const chain = (idx: string, c: string) => [
    `let xh = ((x[${idx}] - shift) - offset) * rstd;`,
    `let a = xh * gamma[${c}] + beta[${c}];`,
    `var dz = dy[${idx}];`,
    v.scaleShift ? `let scale1 = 1.0 + e[n * 2u * u.C + ${c}];` : 'let scale1 = 1.0;',
    v.scaleShift ? `let z = a * scale1 + e[n * 2u * u.C + u.C + ${c}];` : 'let z = a;',
    ...(v.silu ? ['let sig = 1.0 / (1.0 + exp(-z));', 'dz *= sig * (1.0 + z * (1.0 - sig));'] : []),
    'let da = dz * scale1;',
  ].join('\n    ');
  return {
    key: `groupNormBackward${v.scaleShift ? '.scaleShift' : ''}${v.silu ? '.silu' : ''}.${mode}`,
    code: wgsl`${r.enable}
struct Params { C: u32, HW: u32, groups: u32, eps: f32, rows: u32 }
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read> dy: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;
@group(0) @binding(6) var<storage, read_write> dAffine: array<f32>;
#if ${v.scaleShift}
@group(0) @binding(7) var<storage, read> e: array<f32>;
@group(0) @binding(8) var<storage, read_write> dE: array<f32>;
#endif
${r.decls}
${r.entry}
  let ng = row;              // n · groups + g
  if (ng >= u.rows) { return; }
  ${rowStatistics(r.stride)}
  // Per channel: Σ da·x̂, Σ da, Σ dz·a, Σ dz; over the row: Σ dx̂, Σ dx̂·x̂.
  var rowSums = vec2<f32>();
  for (var cc = 0u; cc < cpg; cc++) {
    let c = g * cpg + cc;
    var sums = vec4<f32>();
    for (var i = lane; i < u.HW; i += ${r.stride}u) {
      ${chain('base + cc * u.HW + i', 'c')}
      sums += vec4(da * xh, da, dz * a, dz);
      rowSums += vec2(da * gamma[c], da * gamma[c] * xh);
    }
    sums = rowSum4(sums, lane);
    if (lane == 0u) {
      dAffine[n * 2u * u.C + c] = sums.x;
      dAffine[n * 2u * u.C + u.C + c] = sums.y;
#if ${v.scaleShift}
      dE[n * 2u * u.C + c] = sums.z;
      dE[n * 2u * u.C + u.C + c] = sums.w;
#endif
    }
  }
  let meanD = rowSum4(vec4(rowSums, 0.0, 0.0), lane).xy / f32(count);
  for (var i = lane; i < count; i += ${r.stride}u) {
    let c = g * cpg + i / u.HW;
    ${chain('base + i', 'c')}
    dx[base + i] = rstd * (da * gamma[c] - meanD.x - xh * meanD.y);
  }
}`,
  };
}
