// A strided copy: walks `shape` and reads x at inOffset + Σ c_d·inStrides_d, writes out at
// outOffset + Σ c_d·outStrides_d. Permute, slice, concat and broadcast-expand are all this kernel
// with different strides and offsets; the op first drops unit dimensions and merges those that
// are contiguous in both x and out (a channel concat of NCHW tensors is a rank-2 copy).
import { wgsl } from 'wgsl-preprocessor/wgsl-preprocessor.js';
import { flatMain } from './flat-index.ts';
import { cachedKernelFactory, type KernelSource } from './kernel-source.ts';
import { uniformLayout } from './uniform-layout.ts';

export const COPY_WORKGROUP = 256;

const COPY_PARAMS = uniformLayout({ shape: 'dims', inStrides: 'dims', outStrides: 'dims', n: 'u32', inOffset: 'u32', outOffset: 'u32' });

/**
 * Bindings: x, out. Specialised on the rank, so the walk over dimensions is unrolled and every
 * shape and stride is read at a constant offset of the uniform block (CPU adapters load those once
 * per SIMD vector instead of once per invocation); the outermost coordinate needs no division.
 * With `vectorized`, elements, shapes, strides and offsets count vec4s. With `run` 4, each
 * invocation copies 4 neighbouring elements along the innermost axis, which both tensors hold
 * contiguously: the op gives that axis's size and strides in units of 4 elements and n in runs, so
 * the coordinates (one integer division per axis, lane by lane on CPU adapters) are decoded once
 * per 4 elements, and the 4 loads go out before the 4 stores.
 */
export const stridedCopyKernel = cachedKernelFactory(function stridedCopyKernel(rank: number, vectorized = false, run: 1 | 4 = 1): KernelSource<typeof COPY_PARAMS> {
  const element = vectorized ? 'vec4<f32>' : 'f32';
  const WG = COPY_WORKGROUP;
  const runs = Array.from({ length: run }, (_, j) => j);
  const copy = run === 1
    ? 'out[dst] = x[src];'
    : `${runs.map((j) => `let v${j} = x[src + ${j}u];`).join(' ')}
  ${runs.map((j) => `out[dst + ${j}u] = v${j};`).join(' ')}`;
  const at = (field: string, d: number) => `u.${field}[${d >> 2}][${d & 3}]`;
  const steps: string[] = [];
  for (let d = rank - 1; d > 0; d--) {
    steps.push(`c = rest % ${at('shape', d)}; rest = rest / ${at('shape', d)}; src += c * ${at('inStrides', d)}; dst += c * ${at('outStrides', d)};`);
  }
  steps.push(`src += rest * ${at('inStrides', 0)}; dst += rest * ${at('outStrides', 0)};`);
  return {
    params: COPY_PARAMS,
    key: `stridedCopy.r${rank}${vectorized ? '.vec4' : ''}${run > 1 ? `.run${run}` : ''}`,
    code: wgsl`
${COPY_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> x: array<${element}>;
@group(0) @binding(2) var<storage, read_write> out: array<${element}>;
${flatMain(WG)}
  if (i >= u.n) { return; }
  var rest = i;
  var c = 0u;
  var src = u.inOffset;
  var dst = u.outOffset;
  ${steps.join('\n  ')}
  ${copy}
}`,
  };
});
