// Fused multi-head attention (kernels/attention.wgsl.ts) in the two layouts difrep needs.
import { ATTENTION_KEY_TILE, ATTENTION_QUERIES_PER_WORKGROUP, attentionKernel } from '../../../kernels/attention.wgsl.ts';
import type { Engine } from '../engine.ts';
import { shapeString, type Tensor } from '../tensor.ts';
import { scale } from './elementwise.ts';
import { permute, reshape, slice } from './layout.ts';
import { matmul } from './matmul.ts';
import { softmax } from './softmax.ts';

/**
 * guided-diffusion's channel-major attention on qkv [N, 3·heads·d, T] → [N, heads·d, T], weights
 * softmax((q·λ)ᵀ(k·λ)) with λ = d^(−1/4). `legacy` (QKVAttentionLegacy, the checkpoints' order):
 * head h owns rows [3dh, 3dh+3d) as q | k | v. Otherwise (QKVAttention): q, k, v are the three
 * C-row chunks and head h owns rows [dh, dh+d) of each.
 */
export function qkvAttention(qkv: Tensor, heads: number, legacy = true): Tensor {
  const e = qkv.engine;
  if (qkv.rank !== 3 || qkv.shape[1] % (3 * heads) !== 0) {
    throw new RangeError(`qkvAttention: ${qkv.label} ${shapeString(qkv.shape)} is not [N, 3·${heads}·d, T]`);
  }
  const [N, C3, T] = qkv.shape;
  const d = C3 / (3 * heads);
  const C = heads * d;
  if (attentionMaterialisesWeights(e, d, e.tape.needsGrad([qkv]))) return qkvAttentionComposite(qkv, heads, legacy);
  const out = e.empty([N, heads * d, T], 'attention');
  e.dispatch({
    kernel: attentionKernel(d),
    bindings: [qkv, out],
    params: {
      T, heads, scale: 1 / Math.sqrt(d),
      batchStride: C3 * T, headStride: legacy ? 3 * d * T : d * T, kOffset: legacy ? d * T : C * T, vOffset: legacy ? 2 * d * T : 2 * C * T, chStride: T, tokStride: 1,
      oBatchStride: heads * d * T, oHeadStride: d * T, oChStride: T, oTokStride: 1,
    },
    workgroups: [Math.ceil(T / ATTENTION_QUERIES_PER_WORKGROUP), N * heads],
  });
  return out;
}

/**
 * Whether attention with head size d runs the composite path, which materialises the
 * [N·heads, T, T] weights: when a gradient is wanted, or when the fused kernel's key and value
 * tiles of d floats each exceed the device's workgroup memory (d > 128 at WebGPU's guaranteed 16 KiB).
 */
export function attentionMaterialisesWeights(e: Engine, d: number, needsGrad: boolean): boolean {
  return needsGrad || 2 * ATTENTION_KEY_TILE * d * 4 > e.limits.maxComputeWorkgroupStorageSize;
}

/**
 * The same attention from differentiable ops (matmul, softmax, slices), used when gradients are
 * wanted: the T × T weights are materialised, which the backward pass needs anyway.
 */
function qkvAttentionComposite(qkv: Tensor, heads: number, legacy: boolean): Tensor {
  const e = qkv.engine;
  const [N, C3, T] = qkv.shape;
  const d = C3 / (3 * heads);
  return e.tidy(() => {
    // Per (image, head): q, k, v as [N·heads, d, T].
    const perHead = legacy
      ? reshape(qkv, [N * heads, 3 * d, T])
      : reshape(permute(reshape(qkv, [N, 3, heads, d, T]), [0, 2, 1, 3, 4]), [N * heads, 3 * d, T]);
    const q = slice(perHead, [0, 0], [N * heads, d]);
    const k = slice(perHead, [0, d], [N * heads, 2 * d]);
    const v = slice(perHead, [0, 2 * d], [N * heads, 3 * d]);
    const weights = softmax(scale(matmul(q, k, { transA: true }), 1 / Math.sqrt(d))); // [NH, T(query), T(key)]
    const a = matmul(v, weights, { transB: true }); // [NH, d, T]
    return reshape(a, [N, heads * d, T]);
  });
}
