// The adapter's own limits, measured by the harness: an FMA-bound kernel (independent vec4
// accumulators, no memory traffic) for the compute peak and a vec4 copy for the bandwidth peak.
import { wgsl } from 'wgsl-preprocessor/wgsl-preprocessor.js';
import type { Engine } from '../src/engine/engine.ts';
import { Uniforms } from '../src/engine/uniforms.ts';
import { type Measurement, measure } from './measure.ts';

const FMA_ITERS = 512;
const FMA_WORKGROUPS = 1024;

function fmaPeakKernel() {
  return {
    key: 'bench.fmaPeak',
    code: wgsl`
struct Params { seed: f32 }
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read_write> out: array<vec4<f32>>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  var a = vec4<f32>(u.seed, u.seed + 1.0, u.seed + 2.0, u.seed + 3.0);
  var b = a * 0.5;
  var c = a * 0.25;
  var d = a * 0.125;
  let m = vec4<f32>(0.9999);
  let k = vec4<f32>(0.0001);
  for (var i = 0u; i < ${FMA_ITERS}u; i++) {
    a = fma(a, m, k);
    b = fma(b, m, k);
    c = fma(c, m, k);
    d = fma(d, m, k);
  }
  out[gid.x] = a + b + c + d;
}`,
  };
}

function copyKernel() {
  return {
    key: 'bench.copy',
    code: wgsl`
struct Params { n: u32 }
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> dst: array<vec4<f32>>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = (wid.y * nwg.x + wid.x) * 256u + lid;
  if (i < u.n) { dst[i] = src[i]; }
}`,
  };
}

export interface Peaks {
  gflops: number;
  gbps: number;
  fma: Measurement;
  copy: Measurement;
}

export async function measurePeaks(e: Engine): Promise<Peaks> {
  const out = e.empty([FMA_WORKGROUPS * 64 * 4], 'bench.fma.out');
  // 4 accumulators × 4 lanes × 2 flops per FMA.
  const flops = FMA_WORKGROUPS * 64 * FMA_ITERS * 4 * 4 * 2;
  const fma = await measure(e, () => e.dispatch({ kernel: fmaPeakKernel(), bindings: [out], uniforms: new Uniforms().f32(1).toArrayBuffer(), workgroups: [FMA_WORKGROUPS] }), { flops });
  const n = (64 * 1024 * 1024) / 16; // 64 MiB of vec4
  const src = e.zeros([n * 4], 'bench.copy.src');
  const dst = e.empty([n * 4], 'bench.copy.dst');
  const copy = await measure(e, () => e.dispatch({ kernel: copyKernel(), bindings: [src, dst], uniforms: new Uniforms().u32(n).toArrayBuffer(), workgroups: [Math.min(65535, Math.ceil(n / 256)), Math.ceil(Math.ceil(n / 256) / 65535)] }), { bytes: 2 * n * 16 });
  for (const t of [out, src, dst]) t.dispose();
  return { gflops: fma.gflops!, gbps: copy.gbps!, fma, copy };
}
