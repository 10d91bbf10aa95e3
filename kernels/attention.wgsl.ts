// Multi-head softmax attention, fused: out = softmax(s · QᵀK) · V per head without writing the
// T × T score matrix. One thread owns one query; key/value tiles of TILE keys are staged in
// workgroup memory and folded into a running (max, sum, accumulator) triple — the online softmax
// of flash attention. Q, K, V and the output are addressed through strides so the same kernel
// serves guided-diffusion's legacy QKV layout ([N, heads·3·d, T], per head q | k | v) and the
// token-major layout of the Transformer heads ([N, T, 3, heads, d]).
import { wgsl } from 'wgsl-preprocessor/wgsl-preprocessor.js';
import type { KernelSource } from './kernel-source.ts';
import { uniformLayout } from './uniform-layout.ts';

export const ATTENTION_QUERIES_PER_WORKGROUP = 64;
export const ATTENTION_KEY_TILE = 16;

const ATTENTION_PARAMS = uniformLayout({
  T: 'u32', heads: 'u32', scale: 'f32',
  batchStride: 'u32', headStride: 'u32', kOffset: 'u32', vOffset: 'u32', chStride: 'u32', tokStride: 'u32',
  oBatchStride: 'u32', oHeadStride: 'u32', oChStride: 'u32', oTokStride: 'u32',
});

/**
 * Bindings: qkv, out. Uniforms (element offsets/strides): for Q/K/V of (n, head, channel c,
 * token t) the address is n·batchStride + head·headStride + {0, kOffset, vOffset} + c·chStride +
 * t·tokStride; the output likewise with the o* fields.
 */
export function attentionKernel(headDim: number): KernelSource<typeof ATTENTION_PARAMS> {
  const WG = ATTENTION_QUERIES_PER_WORKGROUP;
  const TILE = ATTENTION_KEY_TILE;
  const D = headDim;
  // Channels are handled four at a time (vec4) when d allows: on lavapipe this keeps q and the
  // accumulator in registers (measured 2.2× faster at d = 64).
  const V = D % 4 === 0 ? 4 : 1;
  const D4 = D / V;
  const vt = V === 4 ? 'vec4<f32>' : 'f32';
  return {
    params: ATTENTION_PARAMS,
    key: `attention.d${D}`,
    code: wgsl`
${ATTENTION_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
var<workgroup> kTile: array<${vt}, ${D4 * TILE}>;
var<workgroup> vTile: array<${vt}, ${D4 * TILE}>;

fn load(a: u32) -> ${vt} {
#if ${V === 4}
  return vec4<f32>(qkv[a], qkv[a + u.chStride], qkv[a + 2u * u.chStride], qkv[a + 3u * u.chStride]);
#else
  return qkv[a];
#endif
}

fn dot4(a: ${vt}, b: ${vt}) -> f32 {
#if ${V === 4}
  return dot(a, b);
#else
  return a * b;
#endif
}

@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let bh = wid.y;
  let n = bh / u.heads;
  let h = bh % u.heads;
  let t = wid.x * ${WG}u + lid;
  let live = t < u.T;
  let base = n * u.batchStride + h * u.headStride;
  var q: array<${vt}, ${D4}>;
  var acc: array<${vt}, ${D4}>;
  if (live) {
    for (var c = 0u; c < ${D4}u; c++) { q[c] = load(base + ${V}u * c * u.chStride + t * u.tokStride) * u.scale; }
  }
  var m = -3.402823e38;
  var l = 0.0;
  for (var j0 = 0u; j0 < u.T; j0 += ${TILE}u) {
    for (var e = lid; e < ${D4 * TILE}u; e += ${WG}u) {
      let j = e / ${D4}u;
      let c = e % ${D4}u;
      var kv = ${vt}(0.0);
      var vv = ${vt}(0.0);
      if (j0 + j < u.T) {
        let a = base + ${V}u * c * u.chStride + (j0 + j) * u.tokStride;
        kv = load(a + u.kOffset);
        vv = load(a + u.vOffset);
      }
      kTile[j * ${D4}u + c] = kv;
      vTile[j * ${D4}u + c] = vv;
    }
    workgroupBarrier();
    if (live) {
      var s: array<f32, ${TILE}>;
      var tileMax = -3.402823e38;
      let valid = min(${TILE}u, u.T - j0);
      for (var j = 0u; j < valid; j++) {
        var d = 0.0;
        for (var c = 0u; c < ${D4}u; c++) { d += dot4(q[c], kTile[j * ${D4}u + c]); }
        s[j] = d;
        tileMax = max(tileMax, d);
      }
      let mNew = max(m, tileMax);
      let correction = exp(m - mNew);
      l *= correction;
      for (var c = 0u; c < ${D4}u; c++) { acc[c] *= correction; }
      for (var j = 0u; j < valid; j++) {
        let p = exp(s[j] - mNew);
        l += p;
        for (var c = 0u; c < ${D4}u; c++) { acc[c] = fma(${vt}(p), vTile[j * ${D4}u + c], acc[c]); }
      }
      m = mNew;
    }
    workgroupBarrier();
  }
  if (live) {
    let inv = 1.0 / l;
    let ob = n * u.oBatchStride + h * u.oHeadStride + t * u.oTokStride;
    for (var c = 0u; c < ${D4}u; c++) {
      let r = acc[c] * inv;
#if ${V === 4}
      for (var k = 0u; k < 4u; k++) { out[ob + (4u * c + k) * u.oChStride] = r[k]; }
#else
      out[ob + c * u.oChStride] = r;
#endif
    }
  }
}`,
  };
}
