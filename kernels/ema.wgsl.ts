// The exponential moving average of parameters (guided-diffusion's update_ema), in place:
//   shadow ← decay·shadow + (1 − decay)·param
// with (1 − decay) computed on the CPU in f64 and passed as a scalar.
import { wgsl } from 'wgsl-preprocessor/wgsl-preprocessor.js';
import type { KernelSource } from './kernel-source.ts';

export const EMA_WORKGROUP = 256;

/** Bindings: shadow (updated in place), param. `vec4`: four values per invocation (u.n counts vec4s). */
export function emaKernel(vec4: boolean): KernelSource {
  const WG = EMA_WORKGROUP;
  const T = vec4 ? 'vec4<f32>' : 'f32';
  return {
    key: `ema${vec4 ? '.vec4' : ''}`,
    code: wgsl`
struct Params { n: u32, decay: f32, rest: f32 }
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read_write> shadow: array<${T}>;
@group(0) @binding(2) var<storage, read> param: array<${T}>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = (wid.y * nwg.x + wid.x) * ${WG}u + lid;
  if (i >= u.n) { return; }
  shadow[i] = u.decay * shadow[i] + u.rest * param[i];
}`,
  };
}
