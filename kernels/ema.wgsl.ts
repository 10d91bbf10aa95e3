// The exponential moving average of parameters (guided-diffusion's update_ema), in place:
//   shadow ← decay·shadow + (1 − decay)·param
// with (1 − decay) computed on the CPU in f64 and passed as a scalar.
import { wgsl } from 'wgsl-preprocessor/wgsl-preprocessor.js';
import { flatBlockMain } from './flat-index.ts';
import { cachedKernelFactory, type KernelSource } from './kernel-source.ts';
import { uniformLayout } from './uniform-layout.ts';

export const EMA_WORKGROUP = 256;

const EMA_PARAMS = uniformLayout({ n: 'u32', decay: 'f32', rest: 'f32' });

/** Bindings: shadow (updated in place), param. `vec4`: vec4 loads (u.n counts vec4s). Dispatch: blockGrid. */
export const emaKernel = cachedKernelFactory(function emaKernel(vec4: boolean): KernelSource<typeof EMA_PARAMS> {
  const WG = EMA_WORKGROUP;
  const T = vec4 ? 'vec4<f32>' : 'f32';
  return {
    key: `ema${vec4 ? '.vec4' : ''}`,
    params: EMA_PARAMS,
    code: wgsl`
${EMA_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read_write> shadow: array<${T}>;
@group(0) @binding(2) var<storage, read> param: array<${T}>;
${flatBlockMain(WG, 'u.n', 'shadow[i] = u.decay * shadow[i] + u.rest * param[i];')}`,
  };
});
