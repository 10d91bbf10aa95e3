// One Adam step (PyTorch torch.optim.Adam, L2 weight decay added to the gradient):
//   g ← g + wd·p;  m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²
//   p ← p − (lr / (1−β1^t)) · m / (sqrt(v) / sqrt(1−β2^t) + eps)
// The bias corrections and 1−β1, 1−β2 are computed on the CPU in f64 and passed as f32 scalars,
// as PyTorch passes them (1.0 − f32(0.999) in f32 is 0.0009999871, not 0.001: v 1.3e-5 off).
import { wgsl } from 'wgsl-preprocessor/wgsl-preprocessor.js';
import { flatBlockMain } from './flat-index.ts';
import { cachedKernelFactory, type KernelSource } from './kernel-source.ts';
import { uniformLayout } from './uniform-layout.ts';

export const ADAM_WORKGROUP = 256;

const ADAM_PARAMS = uniformLayout({ n: 'u32', beta1: 'f32', beta2: 'f32', oneMinusBeta1: 'f32', oneMinusBeta2: 'f32', eps: 'f32', stepSize: 'f32', sqrtBiasCorrection2: 'f32', weightDecay: 'f32' });

/**
 * Bindings: param, grad, m, v (all updated in place except grad). `vec4`: vec4 loads, for tensors
 * of a multiple of 4 values (u.n then counts vec4s); CPU adapters pay per invocation (hence also
 * flatBlockMain's several loads an invocation), GPUs load 16 bytes at once. Dispatch: blockGrid.
 */
export const adamKernel = cachedKernelFactory(function adamKernel(vec4: boolean): KernelSource<typeof ADAM_PARAMS> {
  const WG = ADAM_WORKGROUP;
  const T = vec4 ? 'vec4<f32>' : 'f32';
  return {
    key: `adam${vec4 ? '.vec4' : ''}`,
    params: ADAM_PARAMS,
    code: wgsl`
${ADAM_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read_write> p: array<${T}>;
@group(0) @binding(2) var<storage, read> grad: array<${T}>;
@group(0) @binding(3) var<storage, read_write> m: array<${T}>;
@group(0) @binding(4) var<storage, read_write> v: array<${T}>;
${flatBlockMain(WG, 'u.n', `let pi = p[i];
    let g = grad[i] + u.weightDecay * pi;
    let mi = u.beta1 * m[i] + u.oneMinusBeta1 * g;
    let vi = u.beta2 * v[i] + u.oneMinusBeta2 * g * g;
    m[i] = mi;
    v[i] = vi;
    p[i] = pi - u.stepSize * mi / (sqrt(vi) / u.sqrtBiasCorrection2 + u.eps);`)}`,
  };
});
