// GroupNorm over NCHW data, fused with what follows it in the ADM U-Net:
//   y = GN(x)·γ + β, then optionally ·(1 + scale[n,c]) + shift[n,c] (scale-shift norm, where
//   e = [scale | shift] is the ResBlock's [N, 2C] embedding projection), then optionally SiLU.
// One row per (image, group) — a workgroup per row on GPUs, a thread per row on CPU adapters (see
// rowReduction): a group's channels are contiguous in NCHW, so its values are one contiguous run
// of (C/G)·H·W floats. Statistics in f32 in one pass (rowMeanAndRstd of ./row-reduction.ts:
// Welford per thread and vec4 component, merged by Chan et al.'s rule).
//
// Backward (groupNormBackwardKernel), per row, recomputing the statistics and, elementwise,
//   x̂ = (x − mean)·rstd,  a = x̂·γ + β,  z = a·(1 + scale) + shift,  y = silu(z) or z:
//   dz = dy·silu'(z), silu'(z) = σ(z)·(1 + z·(1 − σ(z)));  da = dz·(1 + scale);  dx̂ = da·γ;
//   dx = rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂))   (means over the row);
//   and per image and channel, summed over H·W: dγ ← Σ da·x̂, dβ ← Σ da, dscale ← Σ dz·a,
//   dshift ← Σ dz (the op sums dγ and dβ over the images).
import { wgsl } from 'wgsl-preprocessor/wgsl-preprocessor.js';
import { cachedKernelFactory, type KernelSource } from './kernel-source.ts';
import { blockedSum, componentSum, type RowParallelism, rowMeanAndRstd, rowReduction, unrolledLoop, vectorType } from './row-reduction.ts';
import { uniformLayout } from './uniform-layout.ts';

export const GROUPNORM_WORKGROUP = 256;

/** rows = N·groups, one per (image, group). */
const GROUPNORM_PARAMS = uniformLayout({ C: 'u32', HW: 'u32', groups: 'u32', eps: 'f32', rows: 'u32' });

export interface GroupNormVariant {
  scaleShift: boolean;
  silu: boolean;
  /**
   * Values per load: 4 reads and writes vec4s, for H·W a multiple of 4 (a vec4 then never spans two
   * channels). On CPU adapters a thread-per-row load is a gather across the SIMD lanes, so a vec4
   * moves four values for about the cost of one; GPUs load 16 bytes at once.
   */
  width: 1 | 4;
}

const variantKey = (v: GroupNormVariant, mode: RowParallelism) => `${v.scaleShift ? '.scaleShift' : ''}${v.silu ? '.silu' : ''}${v.width === 4 ? '.vec4' : ''}.${mode}`;

/**
 * The row statistics of both kernels, in one pass over the row (rowMeanAndRstd): the mean kept as
 * shift + offset, and rstd. Indices count loads of `width` values: `count` per row, `hw` per channel.
 */
function rowStatistics(stride: number, width: number): string {
  return `let n = ng / u.groups;
  let g = ng % u.groups;
  let cpg = u.C / u.groups;
  let hw = u.HW / ${width}u;
  let count = cpg * hw;
  let base = ng * count;     // == (n·C + g·cpg)·HW / width
  ${rowMeanAndRstd(width, stride, 'count', 'base', 'u.eps')}`;
}

/**
 * A loop over the row's loads `i` in channel `c`, with `perChannel` (the channel's affine values)
 * run once per channel where a thread owns the row (CPU adapters: every buffer read there is a
 * per-lane gather, so γ, β, scale and shift read once per value would cost as much as x; the
 * channel's loads are then an unrolledLoop), and once per load where a workgroup shares the row
 * (GPUs: a channel of an 8×8 map has fewer loads than the workgroup has threads).
 */
function channelLoop(mode: RowParallelism, stride: number, perChannel: string, body: string): string {
  if (mode === 'thread') {
    return `for (var cc = 0u; cc < cpg; cc++) {
    let c = g * cpg + cc;
    ${perChannel}
    let channelEnd = (cc + 1u) * hw;
    ${unrolledLoop({ index: 'i', first: 'cc * hw', end: 'channelEnd', stride: 1, body })}
  }`;
  }
  return `for (var i = lane; i < count; i += ${stride}u) {
    let c = g * cpg + i / hw;
    ${perChannel}
    ${body}
  }`;
}

/** Channel c's affine values, as both kernels name them: gc = γ, bc = β, scale1 = 1 + e.scale, shiftc = e.shift. */
function channelAffine(v: GroupNormVariant): string {
  return [
    'let gc = gamma[c];',
    'let bc = beta[c];',
    v.scaleShift ? 'let scale1 = 1.0 + e[n * 2u * u.C + c];' : 'let scale1 = 1.0;',
    ...(v.scaleShift ? ['let shiftc = e[n * 2u * u.C + u.C + c];'] : []),
  ].join('\n    ');
}

/** Bindings: x, gamma, beta, y, then e ([N, 2C]) with scaleShift. */
export const groupNormKernel = cachedKernelFactory(function groupNormKernel(v: GroupNormVariant, mode: RowParallelism): KernelSource<typeof GROUPNORM_PARAMS> {
  const r = rowReduction(mode, GROUPNORM_WORKGROUP);
  const T = vectorType(v.width);
  return {
    params: GROUPNORM_PARAMS,
    key: `groupNorm${variantKey(v, mode)}`,
    code: wgsl`${r.enable}
${GROUPNORM_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read_write> y: array<${T}>;
#if ${v.scaleShift}
@group(0) @binding(5) var<storage, read> e: array<f32>;
#endif
${r.decls}
${r.entry}
  let ng = row;              // n · groups + g
  if (ng >= u.rows) { return; }
  ${rowStatistics(r.stride, v.width)}
  // y = ((x − shift) − offset)·rstd·γ + β, then ·(1 + e.scale) + e.shift: one multiply-add a·(x − shift) + b.
  ${channelLoop(mode, r.stride, `${channelAffine(v)}
    var a = rstd * gc;
    var b = bc - offset * a;${v.scaleShift ? `
    a *= scale1;
    b = b * scale1 + shiftc;` : ''}`, `var r = (x[base + i] - shift) * a + b;${v.silu ? `
      r = r / (1.0 + exp(-r));` : ''}
      y[base + i] = r;`)}
}`,
  };
});

/**
 * Bindings: x, gamma, beta, dy, dx, dAffine ([N, 2C]: Σ da·x̂ | Σ da per image and channel), then
 * e and dE ([N, 2C]: Σ dz·a | Σ dz) with scaleShift.
 */
export const groupNormBackwardKernel = cachedKernelFactory(function groupNormBackwardKernel(v: GroupNormVariant, mode: RowParallelism): KernelSource<typeof GROUPNORM_PARAMS> {
  const r = rowReduction(mode, GROUPNORM_WORKGROUP);
  const T = vectorType(v.width);
  const sum = (x: string) => componentSum(v.width, x);
  const perChannel = channelAffine(v);
  // x̂ (xh), a, z and dz recomputed at load `idx`: the dz and da it names.
  const chain = (idx: string) => [
    `let xh = ((x[${idx}] - shift) - offset) * rstd;`,
    'let a = xh * gc + bc;',
    `var dz = dy[${idx}];`,
    v.scaleShift ? 'let z = a * scale1 + shiftc;' : 'let z = a;',
    ...(v.silu ? ['let sig = 1.0 / (1.0 + exp(-z));', 'dz *= sig * (1.0 + z * (1.0 - sig));'] : []),
    'let da = dz * scale1;',
  ].join('\n      ');
  return {
    params: GROUPNORM_PARAMS,
    key: `groupNormBackward${variantKey(v, mode)}`,
    code: wgsl`${r.enable}
${GROUPNORM_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read> gamma: array<f32>;
@group(0) @binding(3) var<storage, read> beta: array<f32>;
@group(0) @binding(4) var<storage, read> dy: array<${T}>;
@group(0) @binding(5) var<storage, read_write> dx: array<${T}>;
@group(0) @binding(6) var<storage, read_write> dAffine: array<f32>;
#if ${v.scaleShift}
@group(0) @binding(7) var<storage, read> e: array<f32>;
@group(0) @binding(8) var<storage, read_write> dE: array<f32>;
#endif
${r.decls}
${r.entry}
  let ng = row;              // n · groups + g
  if (ng >= u.rows) { return; }
  ${rowStatistics(r.stride, v.width)}
  // Per channel: Σ da·x̂, Σ da, Σ dz·a, Σ dz; over the row: Σ dx̂, Σ dx̂·x̂.
  var rowSums = vec2<f32>();
  for (var cc = 0u; cc < cpg; cc++) {
    let c = g * cpg + cc;
    ${perChannel}
    var sums = vec4<f32>();
    ${blockedSum({
      index: 'i', first: 'cc * hw + lane', end: '(cc + 1u) * hw', stride: r.stride,
      declare: 'var blockSums = vec4<f32>();\n    var blockRowSums = vec2<f32>();',
      body: `${chain('base + i')}
      blockSums += vec4(${sum('da * xh')}, ${sum('da')}, ${sum('dz * a')}, ${sum('dz')});
      blockRowSums += vec2(${sum('da * gc')}, ${sum('da * gc * xh')});`,
      join: 'sums += blockSums;\n    rowSums += blockRowSums;',
    })}
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
  let meanD = rowSum4(vec4(rowSums, 0.0, 0.0), lane).xy / f32(count * ${v.width}u);
  ${channelLoop(mode, r.stride, perChannel, `${chain('base + i')}
      dx[base + i] = rstd * (da * gc - meanD.x - xh * meanD.y);`)}
}`,
  };
});
