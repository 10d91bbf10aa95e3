// Fused multi-head attention (kernels/attention.wgsl.ts) in the two layouts difrep needs.
import {
  ATTENTION_QUERIES_PER_WORKGROUP, attentionBackwardKeyKernel, attentionBackwardQueryKernel, attentionKernel, attentionWorkgroupBytes,
} from '../../../kernels/attention.wgsl.ts';
import type { Engine } from '../engine.ts';
import { shapeString, type Tensor } from '../tensor.ts';
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
  const needsGrad = e.tape.needsGrad([qkv]);
  // The fused kernels' grid has a y per (image, head): past a grid dimension, the composite path,
  // whose matmuls split their batch.
  const gridFits = N * heads <= e.limits.maxComputeWorkgroupsPerDimension;
  if (!gridFits || attentionMaterialisesWeights(e, d, needsGrad, { T, matrices: N * heads })) return qkvAttentionComposite(qkv, heads, legacy);
  const params = {
    T, heads, scale: 1 / Math.sqrt(d),
    batchStride: C3 * T, headStride: legacy ? 3 * d * T : d * T, kOffset: legacy ? d * T : C * T, vOffset: legacy ? 2 * d * T : 2 * C * T, chStride: T, tokStride: 1,
    oBatchStride: heads * d * T, oHeadStride: d * T, oChStride: T, oTokStride: 1,
  };
  const workgroups = [Math.ceil(T / ATTENTION_QUERIES_PER_WORKGROUP), N * heads] as const;
  const out = e.empty([N, heads * d, T], 'attention');
  if (!needsGrad) {
    e.dispatch({ kernel: attentionKernel(d), bindings: [qkv, out], params, workgroups });
    return out;
  }
  // Training: the forward keeps each query's log-sum-exp, and the backward recomputes the weights
  // from it (kernels/attention.wgsl.ts has the equations).
  const lse = e.empty([N * heads, T], 'attention.lse');
  e.dispatch({ kernel: attentionKernel(d, true), bindings: [qkv, out, lse], params, workgroups });
  e.tape.record('qkvAttention', [qkv], [out], [qkv, out, lse], ([dOut]) => {
    const delta = e.empty([N * heads, T], 'dattention.delta');
    const dqkv = e.empty(qkv.shape, 'dqkvAttention');
    e.dispatch({ kernel: attentionBackwardQueryKernel(d), bindings: [qkv, out, dOut!, lse, delta, dqkv], params, workgroups });
    e.dispatch({ kernel: attentionBackwardKeyKernel(d), bindings: [qkv, dOut!, lse, delta, dqkv], params, workgroups });
    delta.dispose();
    return [dqkv];
  });
  lse.dispose(); // the tape holds it until backward
  return out;
}

/**
 * Whether attention with head size d runs the composite path, which materialises the
 * [N·heads, T, T] weights (`matrices` = N·heads of them): when the fused kernels' tiles exceed the
 * device's workgroup memory (d > 128, or d > 127 for the backward, at WebGPU's guaranteed 16 KiB);
 * when a gradient is wanted, unless the engine trains through the fused backward (tuning
 * `attention.fusedBackward`; by default on GPUs, not on CPU adapters, where it is slower, but there
 * too when the weights would not fit a binding: refused, the model could not train); and without a gradient where
 * the subgroup GEMM runs its matmuls (lavapipe: T a multiple of 4) and the weights fit a binding —
 * there the fused kernel, a thread per query, ran 3–5× slower (8 heads × 1024 tokens, d = 64:
 * 583 vs 124 ms; 16 × 256: 75 vs 18 ms; 16 × 64: 6.8 vs 2.3 ms) — unless tuning
 * `attention.fusedForward` says otherwise (1: never; 0: wherever they fit).
 */
export function attentionMaterialisesWeights(e: Engine, d: number, needsGrad: boolean, { T, matrices }: { T: number; matrices: number }): boolean {
  const limit = e.limits.maxComputeWorkgroupStorageSize;
  if (attentionWorkgroupBytes(d, false) > limit) return true;
  const fits = 4 * matrices * T * T <= e.maxBindingBytes;
  if (!needsGrad) return (e.tuning.attention?.fusedForward ?? (e.subgroupMatmul && T % 4 === 0 ? 0 : 1)) === 0 && fits;
  if (attentionWorkgroupBytes(d, true) > limit) return true;
  const fused = (e.tuning.attention?.fusedBackward ?? (e.cpuAdapter ? 0 : 1)) !== 0;
  return !fused && fits;
}

/**
 * The same attention from differentiable ops (matmul, softmax, slices), whose backward follows
 * from theirs: the T × T weights are materialised (attentionMaterialisesWeights says when).
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
    const weights = softmax(matmul(q, k, { transA: true }), { scale: 1 / Math.sqrt(d) }); // [NH, T(query), T(key)]
    const a = matmul(v, weights, { transB: true }); // [NH, d, T]
    return reshape(a, [N, heads * d, T]);
  });
}
