// Row normalisation x̂ = (x − mean) / sqrt(var + eps) over rows of D contiguous values (biased
// variance; mean and variance in one pass: rowMeanAndRstd of ./row-reduction.ts), optionally with
// LayerNorm's affine map in the same pass.
// Backward (per row, g = dL/dx̂):  dx = rstd · (g − mean(g) − x̂ · mean(g · x̂)).
import { wgsl } from 'wgsl-preprocessor/wgsl-preprocessor.js';
import { cachedKernelFactory, type KernelSource } from './kernel-source.ts';
import { blockedSum, componentSum, type RowParallelism, rowMeanAndRstd, rowReduction, vectorType } from './row-reduction.ts';
import { uniformLayout } from './uniform-layout.ts';

export const NORMALIZE_WORKGROUP = 128;

const NORMALIZE_PARAMS = uniformLayout({ rows: 'u32', D: 'u32', eps: 'f32' });
const NORMALIZE_BACKWARD_PARAMS = uniformLayout({ rows: 'u32', D: 'u32' });

/**
 * Bindings: x, xhat, stats ([rows, 2]: mean, rstd). `width` 4: rows of a multiple of 4 values
 * read and written as vec4s (u.D then counts vec4s). `affine` (LayerNorm's, in the same pass):
 * bindings x, y = x̂·γ + β, stats, γ, β ([D] each), and with `keepXhat` x̂ last (for the backward).
 */
export const normalizeRowsKernel = cachedKernelFactory(function normalizeRowsKernel(mode: RowParallelism, width: 1 | 4 = 1, affine: 'none' | 'affine' | 'affineKeepXhat' = 'none'): KernelSource<typeof NORMALIZE_PARAMS> {
  const r = rowReduction(mode, NORMALIZE_WORKGROUP);
  const T = vectorType(width);
  const withAffine = affine !== 'none';
  const keepXhat = affine === 'affineKeepXhat';
  return {
    params: NORMALIZE_PARAMS,
    key: `normalizeRows${width === 4 ? '.vec4' : ''}.${mode}${withAffine ? `.${affine}` : ''}`,
    code: wgsl`${r.enable}
${NORMALIZE_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read_write> ${withAffine ? 'y' : 'xhat'}: array<${T}>;
@group(0) @binding(3) var<storage, read_write> stats: array<f32>;
#if ${withAffine}
@group(0) @binding(4) var<storage, read> gamma: array<${T}>;
@group(0) @binding(5) var<storage, read> beta: array<${T}>;
#endif
#if ${keepXhat}
@group(0) @binding(6) var<storage, read_write> xhat: array<${T}>;
#endif
${r.decls}
${r.entry}
  if (row >= u.rows) { return; }
  let base = row * u.D;
  ${rowMeanAndRstd(width, r.stride, 'u.D', 'base', 'u.eps')}
#if ${withAffine}
  for (var i = lane; i < u.D; i += ${r.stride}u) {
    let h = ((x[base + i] - shift) - offset) * rstd;
    y[base + i] = h * gamma[i] + beta[i];
#if ${keepXhat}
    xhat[base + i] = h;
#endif
  }
#else
  for (var i = lane; i < u.D; i += ${r.stride}u) { xhat[base + i] = ((x[base + i] - shift) - offset) * rstd; }
#endif
  if (lane == 0u) { stats[2u * row] = shift + offset; stats[2u * row + 1u] = rstd; }
}`,
  };
});

/** Bindings: xhat, stats, g (dL/dx̂), dx. `width` as for normalizeRowsKernel. */
export const normalizeRowsBackwardKernel = cachedKernelFactory(function normalizeRowsBackwardKernel(mode: RowParallelism, width: 1 | 4 = 1): KernelSource<typeof NORMALIZE_BACKWARD_PARAMS> {
  const r = rowReduction(mode, NORMALIZE_WORKGROUP);
  const T = vectorType(width);
  return {
    params: NORMALIZE_BACKWARD_PARAMS,
    key: `normalizeRowsBackward${width === 4 ? '.vec4' : ''}.${mode}`,
    code: wgsl`${r.enable}
${NORMALIZE_BACKWARD_PARAMS.wgsl}
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
  ${blockedSum({
    index: 'i', first: 'lane', end: 'u.D', stride: r.stride,
    declare: `var blockG = ${T}();\n    var blockGX = ${T}();`,
    body: 'blockG += g[base + i];\n      blockGX += g[base + i] * xhat[base + i];',
    join: 'sg += blockG;\n    sgx += blockGX;',
  })}
  let meanG = rowSum(${componentSum(width, 'sg')}, lane) / f32(u.D * ${width}u);
  let meanGX = rowSum(${componentSum(width, 'sgx')}, lane) / f32(u.D * ${width}u);
  let rstd = stats[2u * row + 1u];
  for (var i = lane; i < u.D; i += ${r.stride}u) {
    dx[base + i] = rstd * (g[base + i] - meanG - xhat[base + i] * meanGX);
  }
}`,
  };
});
