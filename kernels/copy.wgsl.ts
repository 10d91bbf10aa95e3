// A strided copy: walks `shape` and reads x at inOffset + Σ c_d·inStrides_d, writes out at
// outOffset + Σ c_d·outStrides_d. Permute, slice, concat and broadcast-expand are all this kernel
// with different strides and offsets.
import { wgsl } from 'wgsl-preprocessor/wgsl-preprocessor.js';
import type { KernelSource } from '../src/engine/kernel-registry.ts';

export const COPY_WORKGROUP = 256;

/** Bindings: x, out. */
export function stridedCopyKernel(): KernelSource {
  const WG = COPY_WORKGROUP;
  return {
    key: 'stridedCopy',
    code: wgsl`
struct Params {
  shape: array<vec4<u32>, 2>, inStrides: array<vec4<u32>, 2>, outStrides: array<vec4<u32>, 2>,
  n: u32, rank: u32, inOffset: u32, outOffset: u32,
}
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = (wid.y * nwg.x + wid.x) * ${WG}u + lid;
  if (i >= u.n) { return; }
  var rest = i;
  var src = u.inOffset;
  var dst = u.outOffset;
  for (var d = i32(u.rank) - 1; d >= 0; d--) {
    let size = u.shape[d / 4][d % 4];
    let c = rest % size;
    rest = rest / size;
    src += c * u.inStrides[d / 4][d % 4];
    dst += c * u.outStrides[d / 4][d % 4];
  }
  out[dst] = x[src];
}`,
  };
}
