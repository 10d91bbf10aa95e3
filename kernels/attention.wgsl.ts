// Multi-head softmax attention, fused: out = softmax(s · QᵀK) · V per head without writing the
// T × T score matrix. One thread owns one query; key/value tiles of TILE keys are staged in
// workgroup memory and folded into a running (max, sum, accumulator) triple — the online softmax
// of flash attention. Q, K, V and the output are addressed through strides so the same kernel
// serves guided-diffusion's legacy QKV layout ([N, heads·3·d, T], per head q | k | v) and the
// token-major layout of the Transformer heads ([N, T, 3, heads, d]).
import { wgsl } from 'wgsl-preprocessor/wgsl-preprocessor.js';
import type { KernelSource } from '../src/engine/kernel-registry.ts';

export const ATTENTION_QUERIES_PER_WORKGROUP = 64;
export const ATTENTION_KEY_TILE = 16;

/**
 * Bindings: qkv, out. Uniforms (element offsets/strides): for Q/K/V of (n, head, channel c,
 * token t) the address is n·batchStride + head·headStride + {0, kOffset, vOffset} + c·chStride +
 * t·tokStride; the output likewise with the o* fields.
 */
export function attentionKernel(headDim: number): KernelSource {
  const WG = ATTENTION_QUERIES_PER_WORKGROUP;
  const TILE = ATTENTION_KEY_TILE;
  const D = headDim;
  return {
    key: `attention.d${D}`,
    code: wgsl`
struct Params {
  T: u32, heads: u32, scale: f32,
  batchStride: u32, headStride: u32, kOffset: u32, vOffset: u32, chStride: u32, tokStride: u32,
  oBatchStride: u32, oHeadStride: u32, oChStride: u32, oTokStride: u32,
}
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
var<workgroup> kTile: array<f32, ${D * TILE}>;
var<workgroup> vTile: array<f32, ${D * TILE}>;

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let bh = wid.y;
  let n = bh / u.heads;
  let h = bh % u.heads;
  let t = wid.x * ${WG}u + lid;
  let live = t < u.T;
  let base = n * u.batchStride + h * u.headStride;
  var q: array<f32, ${D}>;
  var acc: array<f32, ${D}>;
  if (live) {
    for (var c = 0u; c < ${D}u; c++) { q[c] = qkv[base + c * u.chStride + t * u.tokStride] * u.scale; }
  }
  var m = -3.402823e38;
  var l = 0.0;
  for (var j0 = 0u; j0 < u.T; j0 += ${TILE}u) {
    for (var e = lid; e < ${D * TILE}u; e += ${WG}u) {
      let c = e / ${TILE}u;
      let j = e % ${TILE}u;
      var kv = 0.0;
      var vv = 0.0;
      if (j0 + j < u.T) {
        let a = base + c * u.chStride + (j0 + j) * u.tokStride;
        kv = qkv[a + u.kOffset];
        vv = qkv[a + u.vOffset];
      }
      kTile[c * ${TILE}u + j] = kv;
      vTile[c * ${TILE}u + j] = vv;
    }
    workgroupBarrier();
    if (live) {
      var s: array<f32, ${TILE}>;
      var tileMax = -3.402823e38;
      let valid = min(${TILE}u, u.T - j0);
      for (var j = 0u; j < valid; j++) {
        var dot = 0.0;
        for (var c = 0u; c < ${D}u; c++) { dot = fma(q[c], kTile[c * ${TILE}u + j], dot); }
        s[j] = dot;
        tileMax = max(tileMax, dot);
      }
      let mNew = max(m, tileMax);
      let correction = exp(m - mNew);
      l *= correction;
      for (var c = 0u; c < ${D}u; c++) { acc[c] *= correction; }
      for (var j = 0u; j < valid; j++) {
        let p = exp(s[j] - mNew);
        l += p;
        for (var c = 0u; c < ${D}u; c++) { acc[c] = fma(p, vTile[c * ${TILE}u + j], acc[c]); }
      }
      m = mNew;
    }
    workgroupBarrier();
  }
  if (live) {
    let inv = 1.0 / l;
    let ob = n * u.oBatchStride + h * u.oHeadStride + t * u.oTokStride;
    for (var c = 0u; c < ${D}u; c++) { out[ob + c * u.oChStride] = acc[c] * inv; }
  }
}`,
  };
}
