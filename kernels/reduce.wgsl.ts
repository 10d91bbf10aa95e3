// Sum (times a scale, so also mean) over the middle axis of a tensor viewed as [outer, n, inner].
import { wgsl } from 'wgsl-preprocessor/wgsl-preprocessor.js';
import { flatMain } from './flat-index.ts';
import { cachedKernelFactory, type KernelSource } from './kernel-source.ts';
import { blockedSum, type RowParallelism, rowReduction } from './row-reduction.ts';
import { uniformLayout } from './uniform-layout.ts';

export const REDUCE_WORKGROUP = 256;

const REDUCE_PARAMS = uniformLayout({ outer: 'u32', n: 'u32', inner: 'u32', scale: 'f32' });

/**
 * out[o] = scale · Σ_k x[o, k] for inner = 1 and n a multiple of 4 (u.n counts vec4s): one thread
 * per row, reading it as vec4s — half the instructions of single values on CPU adapters, where
 * each load is a per-lane gather (a bias gradient's sum over 16 × 64 maps of 32²: 1.2 → 0.7 ms on
 * lavapipe). Bindings: x (as vec4s), out.
 */
export const reduceRowsVec4Kernel = cachedKernelFactory(function reduceRowsVec4Kernel(): KernelSource<typeof REDUCE_PARAMS> {
  return {
    key: 'reduceSum.rows.vec4',
    params: REDUCE_PARAMS,
    code: wgsl`
${REDUCE_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
${flatMain(REDUCE_WORKGROUP)}
  if (i >= u.outer) { return; }
  var acc = vec4<f32>();
  let base = i * u.n;
  ${blockedSum({ index: 'k', first: '0u', end: 'u.n', stride: 1, declare: 'var block = vec4<f32>();', body: 'block += x[base + k];', join: 'acc += block;' })}
  out[i] = dot(acc, vec4(1.0)) * u.scale;
}`,
  };
});

/**
 * out[o, j] = scale · Σ_k x[o, k, j]. `rowwise` (for inner = 1): one workgroup per output, its
 * threads stride over k and combine as `mode` says ('workgroup' or 'subgroup', the RowParallelism
 * of ./row-reduction.ts); otherwise one thread per output, with neighbouring threads reading
 * neighbouring j (coalesced). Bindings: x, out.
 */
export const reduceSumKernel = cachedKernelFactory(function reduceSumKernel(rowwise: boolean, mode: Exclude<RowParallelism, 'thread'> = 'workgroup'): KernelSource<typeof REDUCE_PARAMS> {
  const WG = REDUCE_WORKGROUP;
  if (rowwise) {
    const r = rowReduction(mode, WG);
    return {
      key: `reduceSum.row.${mode}`,
      params: REDUCE_PARAMS,
      code: wgsl`${r.enable}
${REDUCE_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
${r.decls}
${r.entry}
  let o = row;
  if (o >= u.outer) { return; }
  let base = o * u.n;
  var acc = 0.0;
  ${blockedSum({ index: 'k', first: 'lane', end: 'u.n', stride: WG, declare: 'var block = 0.0;', body: 'block += x[base + k];', join: 'acc += block;' })}
  let total = rowSum(acc, lane);
  if (lane == 0u) { out[o] = total * u.scale; }
}`,
    };
  }
  return {
    key: 'reduceSum.col',
    params: REDUCE_PARAMS,
    code: wgsl`
${REDUCE_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
${flatMain(WG)}
  if (i >= u.outer * u.inner) { return; }
  let o = i / u.inner;
  let j = i % u.inner;
  var acc = 0.0;
  let first = o * u.n * u.inner + j;
  ${blockedSum({ index: 'k', first: '0u', end: 'u.n', stride: 1, declare: 'var block = 0.0;\n    var p = first + blockStart * u.inner;', body: 'block += x[p];\n      p += u.inner;', join: 'acc += block;' })}
  out[i] = acc * u.scale;
}`,
  };
});
