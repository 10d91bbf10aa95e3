// Softmax and log-softmax over the last axis of a [rows, n] tensor: a workgroup per row, or a
// thread per row on CPU adapters (the RowParallelism of ./row-reduction.ts).
import { wgsl } from 'wgsl-preprocessor/wgsl-preprocessor.js';
import { cachedKernelFactory, type KernelSource } from './kernel-source.ts';
import { blockedSum, componentMax, componentSum, LOWEST_F32, type RowParallelism, rowReduction, SUM_BLOCK, vectorType } from './row-reduction.ts';
import { uniformLayout } from './uniform-layout.ts';

export const SOFTMAX_WORKGROUP = 64;

/** scale: the logits are scale·x (attention's 1/√d, folded in instead of a pass of its own). */
const SOFTMAX_PARAMS = uniformLayout({ rows: 'u32', n: 'u32', scale: 'f32' });

/**
 * y = softmax(scale·x) or log_softmax(scale·x) per row, max-subtracted for stability: two passes
 * over x (the maximum and the sum together, then the output) instead of three. `width` 4: rows of a
 * multiple of 4 values read and written as vec4s (u.n then counts vec4s). Bindings: x, y.
 */
export const softmaxKernel = cachedKernelFactory(function softmaxKernel(log: boolean, mode: RowParallelism, width: 1 | 4 = 1): KernelSource<typeof SOFTMAX_PARAMS> {
  const r = rowReduction(mode, SOFTMAX_WORKGROUP);
  const T = vectorType(width);
  return {
    params: SOFTMAX_PARAMS,
    key: `softmax.${log ? 'log' : 'plain'}${width === 4 ? '.vec4' : ''}.${mode}`,
    code: wgsl`${r.enable}
${SOFTMAX_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> x: array<${T}>;
@group(0) @binding(2) var<storage, read_write> y: array<${T}>;
${r.decls}
${r.entry}
  if (row >= u.rows) { return; }
  let base = row * u.n;
  // One pass for the maximum and the sum (online softmax: Milakov & Gimelshein 2018, Alg. 3):
  // each thread keeps its running maximum mt and st = Σ exp(x − mt), rescaling st when mt grows;
  // the row's m is the threads' maximum and s = Σ st·exp(mt − m). Four loads a step share one
  // rescale, and the loop carries mt and st a quarter as often (lavapipe blends them with the
  // loop's mask every iteration): 1024 × 1024 2.9 → 2.45 ms by interleaved medians on 2 cores.
  // Blocks of SUM_BLOCK loads keep their own (mb, sb), merged into (mt, st) by the same rule: one
  // chain over a thread's whole row (a thread per row on CPU adapters) was 7.5e-4 off float64 at
  // 262,143 values in [5, 5.002], where PyTorch's CPU float32 is 2.2e-6 off.
  var mt = ${LOWEST_F32};
  var st = 0.0;
  for (var blockStart = lane; blockStart < u.n; blockStart += ${SUM_BLOCK * r.stride}u) {
    let blockEnd = min(blockStart + ${SUM_BLOCK * r.stride}u, u.n);
    var mb = ${LOWEST_F32};
    var sb = 0.0;
    var k = blockStart;
    for (; k + ${3 * r.stride}u < blockEnd; k += ${4 * r.stride}u) {
      let v0 = x[base + k] * u.scale;
      let v1 = x[base + k + ${r.stride}u] * u.scale;
      let v2 = x[base + k + ${2 * r.stride}u] * u.scale;
      let v3 = x[base + k + ${3 * r.stride}u] * u.scale;
      let grown = max(max(mb, max(${componentMax(width, 'v0')}, ${componentMax(width, 'v1')})), max(${componentMax(width, 'v2')}, ${componentMax(width, 'v3')}));
      sb = sb * exp(mb - grown) + ${componentSum(width, '(exp(v0 - grown) + exp(v1 - grown)) + (exp(v2 - grown) + exp(v3 - grown))')};
      mb = grown;
    }
    for (; k < blockEnd; k += ${r.stride}u) {
      let v = x[base + k] * u.scale;
      let grown = max(mb, ${componentMax(width, 'v')});
      sb = sb * exp(mb - grown) + ${componentSum(width, 'exp(v - grown)')};
      mb = grown;
    }
    let grown = max(mt, mb);
    st = st * exp(mt - grown) + sb * exp(mb - grown);
    mt = grown;
  }
  let m = rowMax(mt, lane);
  let s = rowSum(st * exp(mt - m), lane);
#if ${log}
  let logS = log(s);
  for (var k = lane; k < u.n; k += ${r.stride}u) { y[base + k] = x[base + k] * u.scale - m - logS; }
#else
  let inv = 1.0 / s;
  for (var k = lane; k < u.n; k += ${r.stride}u) { y[base + k] = exp(x[base + k] * u.scale - m) * inv; }
#endif
}`,
  };
});

/**
 * Backward from the forward output y: softmax dx = scale·y·(dy − Σ dy·y);
 * log-softmax dx = scale·(dy − exp(y)·Σ dy), Σ in blocks of SUM_BLOCK (blockedSum). `width` as for
 * softmaxKernel. Bindings: y, dy, dx.
 */
export const softmaxBackwardKernel = cachedKernelFactory(function softmaxBackwardKernel(log: boolean, mode: RowParallelism, width: 1 | 4 = 1): KernelSource<typeof SOFTMAX_PARAMS> {
  const r = rowReduction(mode, SOFTMAX_WORKGROUP);
  const T = vectorType(width);
  return {
    params: SOFTMAX_PARAMS,
    key: `softmaxBackward.${log ? 'log' : 'plain'}${width === 4 ? '.vec4' : ''}.${mode}`,
    code: wgsl`${r.enable}
${SOFTMAX_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> y: array<${T}>;
@group(0) @binding(2) var<storage, read> dy: array<${T}>;
@group(0) @binding(3) var<storage, read_write> dx: array<${T}>;
${r.decls}
${r.entry}
  if (row >= u.rows) { return; }
  let base = row * u.n;
  var sv = ${T}();
  ${blockedSum({ index: 'k', first: 'lane', end: 'u.n', stride: r.stride, declare: `var bsv = ${T}();`, body: log ? 'bsv += dy[base + k];' : 'bsv += dy[base + k] * y[base + k];', join: 'sv += bsv;' })}
  let total = rowSum(${componentSum(width, 'sv')}, lane);
#if ${log}
  for (var k = lane; k < u.n; k += ${r.stride}u) { dx[base + k] = (dy[base + k] - exp(y[base + k]) * total) * u.scale; }
#else
  for (var k = lane; k < u.n; k += ${r.stride}u) { dx[base + k] = y[base + k] * (dy[base + k] - total) * u.scale; }
#endif
}`,
  };
});
