// Multi-head softmax attention, fused: out = softmax(s · QᵀK) · V per head without writing the
// T × T score matrix. One thread owns one query; key/value tiles of TILE keys are staged in
// workgroup memory and folded into a running (max, sum, accumulator) triple — the online softmax
// of flash attention. Q, K, V and the output are addressed through strides so the same kernel
// serves guided-diffusion's legacy QKV layout ([N, heads·3·d, T], per head q | k | v) and the
// token-major layout of the Transformer heads ([N, T, 3, heads, d]).
//
// Backward, flash-style (Dao, "FlashAttention-2", 2023, Algorithm 2): the forward also keeps each
// query's log-sum-exp L_i = log Σ_j exp(s_ij) of the scaled scores s_ij = s·q_i·k_j, so the
// weights are recomputed, never stored: p_ij = exp(s_ij − L_i). With dO the output's gradient,
//   D_i = dO_i · O_i (= Σ_j p_ij dO_i·v_j),   dS_ij = p_ij (dO_i · v_j − D_i),
//   dq_i = s · Σ_j dS_ij k_j,   dk_j = s · Σ_i dS_ij q_i,   dv_j = Σ_i p_ij dO_i.
// attentionBackwardQueryKernel (a thread per query) writes D and dq; attentionBackwardKeyKernel
// (a thread per key, query tiles staged in workgroup memory) then dk and dv — no float atomics.
import { wgsl } from 'wgsl-preprocessor/wgsl-preprocessor.js';
import { cachedKernelFactory, type KernelSource } from './kernel-source.ts';
import { LOWEST_F32 } from './row-reduction.ts';
import { uniformLayout } from './uniform-layout.ts';

export const ATTENTION_QUERIES_PER_WORKGROUP = 64;
export const ATTENTION_KEY_TILE = 16;

const ATTENTION_PARAMS = uniformLayout({
  T: 'u32', heads: 'u32', scale: 'f32',
  batchStride: 'u32', headStride: 'u32', kOffset: 'u32', vOffset: 'u32', chStride: 'u32', tokStride: 'u32',
  oBatchStride: 'u32', oHeadStride: 'u32', oChStride: 'u32', oTokStride: 'u32',
});

/** Workgroup memory of the kernels for head size d: the forward's key and value tiles, the key kernel's query tiles and their L and D. */
export const attentionWorkgroupBytes = (d: number, backward: boolean) => 4 * ATTENTION_KEY_TILE * (2 * d + (backward ? 2 : 0));

/**
 * Channels go four at a time (vec4) when d allows: on lavapipe this keeps q and the accumulator in
 * registers (measured 2.2× faster at d = 64). `load` reads a channel group of qkv at address a,
 * `loadOut(buffer, a)` one of the output's layout; `dot4` sums a product's lanes.
 */
function channelHelpers(D: number) {
  const V = D % 4 === 0 ? 4 : 1;
  const vt = V === 4 ? 'vec4<f32>' : 'f32';
  const gather = (buffer: string, stride: string) => (V === 4 ? `vec4<f32>(${buffer}[a], ${buffer}[a + ${stride}], ${buffer}[a + 2u * ${stride}], ${buffer}[a + 3u * ${stride}])` : `${buffer}[a]`);
  return {
    V, D4: D / V, vt,
    code: `fn load(a: u32) -> ${vt} { return ${gather('qkv', 'u.chStride')}; }
fn dot4(a: ${vt}, b: ${vt}) -> f32 { return ${V === 4 ? 'dot(a, b)' : 'a * b'}; }`,
    loadOut: (buffer: string) => `fn load_${buffer}(a: u32) -> ${vt} { return ${gather(buffer, 'u.oChStride')}; }`,
    /** Writes value (a vt) of channel group c at address a of `buffer` (channel stride `stride`). */
    store: (buffer: string, a: string, stride: string, value: string) =>
      V === 4 ? `for (var lane = 0u; lane < 4u; lane++) { ${buffer}[${a} + lane * ${stride}] = ${value}[lane]; }` : `${buffer}[${a}] = ${value};`,
  };
}

/** `main`, opened with the invocation's (image, head) and token, from workgroup (x: token block, y: image·heads + head). */
const tokenMain = (WG: number) => `@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let bh = wid.y;
  let n = bh / u.heads;
  let h = bh % u.heads;
  let t = wid.x * ${WG}u + lid;
  let live = t < u.T;
  let base = n * u.batchStride + h * u.headStride;
  let ob = n * u.oBatchStride + h * u.oHeadStride + t * u.oTokStride;`;

/**
 * Bindings: qkv, out, and with `logSumExp` lse ([N·heads, T]: each query's L_i, for the backward).
 * Uniforms (element offsets/strides): for Q/K/V of (n, head, channel c, token t) the address is
 * n·batchStride + head·headStride + {0, kOffset, vOffset} + c·chStride + t·tokStride; the output
 * likewise with the o* fields.
 */
export const attentionKernel = cachedKernelFactory(function attentionKernel(headDim: number, logSumExp = false): KernelSource<typeof ATTENTION_PARAMS> {
  const WG = ATTENTION_QUERIES_PER_WORKGROUP;
  const TILE = ATTENTION_KEY_TILE;
  const c = channelHelpers(headDim);
  const { V, D4, vt } = c;
  return {
    params: ATTENTION_PARAMS,
    key: `attention.d${headDim}${logSumExp ? '.lse' : ''}`,
    code: wgsl`
${ATTENTION_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
#if ${logSumExp}
@group(0) @binding(3) var<storage, read_write> lse: array<f32>;
#endif
var<workgroup> kTile: array<${vt}, ${D4 * TILE}>;
var<workgroup> vTile: array<${vt}, ${D4 * TILE}>;
${c.code}

${tokenMain(WG)}
  var q: array<${vt}, ${D4}>;
  var acc: array<${vt}, ${D4}>;
  if (live) {
    for (var c = 0u; c < ${D4}u; c++) { q[c] = load(base + ${V}u * c * u.chStride + t * u.tokStride) * u.scale; }
  }
  var m = ${LOWEST_F32};
  var l = 0.0;
  for (var j0 = 0u; j0 < u.T; j0 += ${TILE}u) {
    ${stageKeys(D4, V, vt, TILE, WG)}
    workgroupBarrier();
    if (live) {
      var s: array<f32, ${TILE}>;
      var tileMax = ${LOWEST_F32};
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
    for (var c = 0u; c < ${D4}u; c++) {
      let r = acc[c] * inv;
      ${c.store('out', `ob + ${V}u * c * u.oChStride`, 'u.oChStride', 'r')}
    }
#if ${logSumExp}
    lse[bh * u.T + t] = m + log(l);
#endif
  }
}`,
  };
});

/** Stages keys and values j0 … j0 + TILE − 1 of this (image, head) in kTile and vTile (zero past T). */
function stageKeys(D4: number, V: number, vt: string, TILE: number, WG: number): string {
  return `for (var e = lid; e < ${D4 * TILE}u; e += ${WG}u) {
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
    }`;
}

/**
 * The query side of the backward (see the header): a thread per query i recomputes p_ij over the
 * key tiles and writes D_i and dq_i. Bindings: qkv, out (O), dout (dO, O's layout), lse, delta
 * ([N·heads, T], written), dqkv (its q rows written).
 */
export const attentionBackwardQueryKernel = cachedKernelFactory(function attentionBackwardQueryKernel(headDim: number): KernelSource<typeof ATTENTION_PARAMS> {
  const WG = ATTENTION_QUERIES_PER_WORKGROUP;
  const TILE = ATTENTION_KEY_TILE;
  const c = channelHelpers(headDim);
  const { V, D4, vt } = c;
  return {
    params: ATTENTION_PARAMS,
    key: `attentionBackwardQuery.d${headDim}`,
    code: wgsl`
${ATTENTION_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> out: array<f32>;
@group(0) @binding(3) var<storage, read> dout: array<f32>;
@group(0) @binding(4) var<storage, read> lse: array<f32>;
@group(0) @binding(5) var<storage, read_write> delta: array<f32>;
@group(0) @binding(6) var<storage, read_write> dqkv: array<f32>;
var<workgroup> kTile: array<${vt}, ${D4 * TILE}>;
var<workgroup> vTile: array<${vt}, ${D4 * TILE}>;
${c.code}
${c.loadOut('out')}
${c.loadOut('dout')}

${tokenMain(WG)}
  var q: array<${vt}, ${D4}>;
  var dO: array<${vt}, ${D4}>;
  var dq: array<${vt}, ${D4}>;
  var D = 0.0;
  var L = 0.0;
  if (live) {
    for (var c = 0u; c < ${D4}u; c++) {
      q[c] = load(base + ${V}u * c * u.chStride + t * u.tokStride) * u.scale;
      dO[c] = load_dout(ob + ${V}u * c * u.oChStride);
      D += dot4(dO[c], load_out(ob + ${V}u * c * u.oChStride));
    }
    L = lse[bh * u.T + t];
  }
  for (var j0 = 0u; j0 < u.T; j0 += ${TILE}u) {
    ${stageKeys(D4, V, vt, TILE, WG)}
    workgroupBarrier();
    if (live) {
      let valid = min(${TILE}u, u.T - j0);
      for (var j = 0u; j < valid; j++) {
        var s = 0.0;
        var dP = 0.0;
        for (var c = 0u; c < ${D4}u; c++) {
          s += dot4(q[c], kTile[j * ${D4}u + c]);
          dP += dot4(dO[c], vTile[j * ${D4}u + c]);
        }
        let dS = exp(s - L) * (dP - D);
        for (var c = 0u; c < ${D4}u; c++) { dq[c] = fma(${vt}(dS), kTile[j * ${D4}u + c], dq[c]); }
      }
    }
    workgroupBarrier();
  }
  if (live) {
    delta[bh * u.T + t] = D;
    for (var c = 0u; c < ${D4}u; c++) {
      let g = dq[c] * u.scale;
      ${c.store('dqkv', `base + ${V}u * c * u.chStride + t * u.tokStride`, 'u.chStride', 'g')}
    }
  }
}`,
  };
});

/**
 * The key side of the backward: a thread per key j recomputes p_ij over tiles of queries (their
 * scaled q, dO, L and D staged in workgroup memory) and writes dk_j and dv_j. Bindings: qkv, dout,
 * lse, delta (from attentionBackwardQueryKernel), dqkv (its k and v rows written).
 */
export const attentionBackwardKeyKernel = cachedKernelFactory(function attentionBackwardKeyKernel(headDim: number): KernelSource<typeof ATTENTION_PARAMS> {
  const WG = ATTENTION_QUERIES_PER_WORKGROUP;
  const TILE = ATTENTION_KEY_TILE;
  const c = channelHelpers(headDim);
  const { V, D4, vt } = c;
  return {
    params: ATTENTION_PARAMS,
    key: `attentionBackwardKey.d${headDim}`,
    code: wgsl`
${ATTENTION_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> qkv: array<f32>;
@group(0) @binding(2) var<storage, read> dout: array<f32>;
@group(0) @binding(3) var<storage, read> lse: array<f32>;
@group(0) @binding(4) var<storage, read> delta: array<f32>;
@group(0) @binding(5) var<storage, read_write> dqkv: array<f32>;
var<workgroup> qTile: array<${vt}, ${D4 * TILE}>;
var<workgroup> dOTile: array<${vt}, ${D4 * TILE}>;
var<workgroup> lTile: array<f32, ${TILE}>;
var<workgroup> dTile: array<f32, ${TILE}>;
${c.code}
${c.loadOut('dout')}

${tokenMain(WG)}
  _ = ob;
  var k: array<${vt}, ${D4}>;
  var v: array<${vt}, ${D4}>;
  var dk: array<${vt}, ${D4}>;
  var dv: array<${vt}, ${D4}>;
  if (live) {
    for (var c = 0u; c < ${D4}u; c++) {
      let a = base + ${V}u * c * u.chStride + t * u.tokStride;
      k[c] = load(a + u.kOffset);
      v[c] = load(a + u.vOffset);
    }
  }
  let oBase = n * u.oBatchStride + h * u.oHeadStride;
  for (var i0 = 0u; i0 < u.T; i0 += ${TILE}u) {
    for (var e = lid; e < ${D4 * TILE}u; e += ${WG}u) {
      let i = e / ${D4}u;
      let c = e % ${D4}u;
      var qv = ${vt}(0.0);
      var gv = ${vt}(0.0);
      if (i0 + i < u.T) {
        qv = load(base + ${V}u * c * u.chStride + (i0 + i) * u.tokStride) * u.scale;
        gv = load_dout(oBase + ${V}u * c * u.oChStride + (i0 + i) * u.oTokStride);
      }
      qTile[i * ${D4}u + c] = qv;
      dOTile[i * ${D4}u + c] = gv;
    }
    for (var e = lid; e < ${TILE}u; e += ${WG}u) {
      lTile[e] = select(0.0, lse[bh * u.T + i0 + e], i0 + e < u.T);
      dTile[e] = select(0.0, delta[bh * u.T + i0 + e], i0 + e < u.T);
    }
    workgroupBarrier();
    if (live) {
      let valid = min(${TILE}u, u.T - i0);
      for (var i = 0u; i < valid; i++) {
        var s = 0.0;
        var dP = 0.0;
        for (var c = 0u; c < ${D4}u; c++) {
          s += dot4(qTile[i * ${D4}u + c], k[c]);
          dP += dot4(dOTile[i * ${D4}u + c], v[c]);
        }
        let p = exp(s - lTile[i]);
        let dS = p * (dP - dTile[i]);
        for (var c = 0u; c < ${D4}u; c++) {
          dv[c] = fma(${vt}(p), dOTile[i * ${D4}u + c], dv[c]);
          dk[c] = fma(${vt}(dS), qTile[i * ${D4}u + c], dk[c]);
        }
      }
    }
    workgroupBarrier();
  }
  if (live) {
    for (var c = 0u; c < ${D4}u; c++) {
      let a = base + ${V}u * c * u.chStride + t * u.tokStride;
      ${c.store('dqkv', 'a + u.kOffset', 'u.chStride', 'dk[c]')}
      ${c.store('dqkv', 'a + u.vOffset', 'u.chStride', 'dv[c]')}
    }
  }
}`,
  };
});
