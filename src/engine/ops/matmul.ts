// Batched matmul with either operand transposed and an optional bias over the last axis.
// Kernel: kernels/matmul.wgsl.ts.
//
// Backward, with A' = op(A) (M×K), B' = op(B) (K×N), C = A'·B':
//   dA' = dC·B'ᵀ and dB' = A'ᵀ·dC, so
//   dA = transA ? B'·dCᵀ : dC·B'ᵀ      dB = transB ? dCᵀ·A' : A'ᵀ·dC
// each again one matmul call with transpose flags; operands broadcast over the batch get their
// gradient summed over it.
import { chooseGemmTiling, gemmWorkgroups, matmulKernel, type MatmulTiling, vectorizableGemm, vectorizableOperands } from '../../../kernels/matmul.wgsl.ts';
import { subgroupGemmColumnGroups, subgroupGemmOrder, subgroupGemmRows, subgroupGemmWorkgroups, subgroupMatmulKernel } from '../../../kernels/matmul-subgroup.wgsl.ts';
import { shapeString, type Tensor } from '../tensor.ts';
import { add } from './elementwise.ts';
import { concatRows, expand, slice, sliceRows } from './layout.ts';
import { sum } from './reduce.ts';

export interface MatmulOptions {
  transA?: boolean;
  transB?: boolean;
  bias?: Tensor;
}

function splitBatch(t: Tensor): { batch: number[]; rows: number; cols: number } {
  if (t.rank < 2) throw new RangeError(`matmul: ${t.label} ${shapeString(t.shape)} needs at least 2 dims`);
  return { batch: t.shape.slice(0, -2), rows: t.shape[t.rank - 2], cols: t.shape[t.rank - 1] };
}

export interface MatmulDispatch {
  M: number;
  N: number;
  K: number;
  batch: number;
  transA: boolean;
  transB: boolean;
  /** One A (or B) matrix for every batch entry. */
  broadcastA?: boolean;
  broadcastB?: boolean;
  bias?: Tensor;
}

/**
 * out[b] = op(a[b]) · op(b[b]) (+ bias) into `out` ([batch, M, N]), with no tape record: the
 * GEMM step of ops built on it (matmul, the Winograd conv), shapes already checked by the caller.
 */
export function dispatchMatmul(a: Tensor, b: Tensor, out: Tensor, d: MatmulDispatch): void {
  const e = a.engine;
  const params = { M: d.M, N: d.N, K: d.K, strideA: d.broadcastA ? 0 : d.M * d.K, strideB: d.broadcastB ? 0 : d.K * d.N };
  const bindings = d.bias ? [a, b, out, d.bias] : [a, b, out];
  if (e.subgroupMatmul && !e.tuning.matmul && vectorizableOperands(d.M, d.N, d.K, d.transA, d.transB)) {
    const rows = subgroupGemmRows(d.M);
    const groups = subgroupGemmColumnGroups(d.N, d.transB);
    const order = subgroupGemmOrder(d.M, d.N);
    e.dispatch({
      kernel: subgroupMatmulKernel({ transA: d.transA, transB: d.transB, bias: !!d.bias }, rows, groups, order),
      bindings,
      params: { ...params, batches: d.batch },
      workgroups: subgroupGemmWorkgroups(rows, d.M, d.N, d.batch, groups, order),
    });
    return;
  }
  const tiling: MatmulTiling = chooseGemmTiling(d.M, d.N, e.gemmPresets, e.tuning.matmul, e.limits.maxComputeWorkgroupStorageSize);
  e.dispatch({
    kernel: matmulKernel({ transA: d.transA, transB: d.transB, bias: !!d.bias, vec4: vectorizableGemm(d.M, d.N, d.K, d.transA, d.transB, tiling), storeLoop: e.cpuAdapter }, tiling),
    bindings,
    params,
    workgroups: gemmWorkgroups(tiling, d.M, d.N, d.batch),
  });
}

/**
 * A reduction longer than LONG_K runs as products over chunks of K_CHUNK, added up: each output's
 * one f32 chain over all of K (the kernels') had about 150 times PyTorch's error at K = 1e6
 * (1.9e-4 against 1.2e-6: its BLAS blocks K), 2.2e-5 at 2¹⁸ (a linear probe on unpooled maps).
 */
export const LONG_K = 16384;
export const K_CHUNK = 4096;

function chunkedMatmul(a: Tensor, b: Tensor, shape: number[], label: string, d: MatmulDispatch): Tensor {
  const e = a.engine;
  // The K axis of each operand: A is [..., M, K] (Aᵀ: [..., K, M]), B [..., K, N] (Bᵀ: [..., N, K]).
  const kSlice = (t: Tensor, axis: number, k0: number, k1: number) =>
    slice(t, t.shape.map((_, i) => (i === axis ? k0 : 0)), t.shape.map((n, i) => (i === axis ? k1 : n)));
  let total: Tensor | null = null;
  return e.noGrad(() => {
    for (let k0 = 0; k0 < d.K; k0 += K_CHUNK) {
      const k1 = Math.min(d.K, k0 + K_CHUNK);
      total = e.tidy(() => {
        const part = e.empty(shape, label);
        const aPart = kSlice(a, d.transA ? a.rank - 2 : a.rank - 1, k0, k1);
        const bPart = kSlice(b, d.transB ? b.rank - 1 : b.rank - 2, k0, k1);
        dispatchMatmul(aPart, bPart, part, { ...d, K: k1 - k0, bias: k0 === 0 ? d.bias : undefined });
        const sum = total ? add(total, part) : part;
        total?.dispose();
        return sum;
      });
    }
    const out = e.view(total!, shape, label);
    total!.dispose();
    return out;
  });
}

/**
 * A batch of more entries than a grid dimension holds (the kernels put one z per entry; a bilinear
 * resize of N·C planes reaches 65536) runs in chunks of entries, their outputs joined.
 */
function batchChunkedMatmul(a: Tensor, b: Tensor, shape: number[], label: string, d: MatmulDispatch): Tensor {
  const e = a.engine;
  const step = e.limits.maxComputeWorkgroupsPerDimension;
  const flat = (t: Tensor, broadcast: boolean | undefined) => (broadcast ? e.view(t, t.shape.slice(-2)) : e.view(t, [d.batch, ...t.shape.slice(-2)]));
  return e.noGrad(() => e.tidy(() => {
    const [A, B] = [flat(a, d.broadcastA), flat(b, d.broadcastB)];
    const parts: Tensor[] = [];
    for (let b0 = 0; b0 < d.batch; b0 += step) {
      const b1 = Math.min(d.batch, b0 + step);
      const chunk = (t: Tensor, broadcast: boolean | undefined) => (broadcast ? t : sliceRows(t, b0, b1));
      const [aPart, bPart, sub] = [chunk(A, d.broadcastA), chunk(B, d.broadcastB), { ...d, batch: b1 - b0 }];
      if (d.K > LONG_K) parts.push(chunkedMatmul(aPart, bPart, [b1 - b0, d.M, d.N], label, sub));
      else {
        const part = e.empty([b1 - b0, d.M, d.N], label);
        dispatchMatmul(aPart, bPart, part, sub);
        parts.push(part);
      }
    }
    return e.view(concatRows(parts), shape, label);
  }));
}

export function matmul(a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
  const e = a.engine;
  const transA = opts.transA ?? false;
  const transB = opts.transB ?? false;
  const A = splitBatch(a);
  const B = splitBatch(b);
  const [M, K] = transA ? [A.cols, A.rows] : [A.rows, A.cols];
  const [K2, N] = transB ? [B.cols, B.rows] : [B.rows, B.cols];
  const operands = `${a.label} ${shapeString(a.shape)}${transA ? 'ᵀ' : ''} × ${b.label} ${shapeString(b.shape)}${transB ? 'ᵀ' : ''}`;
  if (K !== K2) throw new RangeError(`matmul: ${operands}: inner sizes ${K} vs ${K2} do not match`);
  // NumPy's batch broadcasting, as far as the kernels go: equal batch shapes (left-padded with 1s),
  // or one side's batch all 1s, read with batch stride 0.
  const rank = Math.max(A.batch.length, B.batch.length);
  const batchA = [...new Array<number>(rank - A.batch.length).fill(1), ...A.batch];
  const batchB = [...new Array<number>(rank - B.batch.length).fill(1), ...B.batch];
  const broadcastA = batchA.every((d) => d === 1);
  const broadcastB = batchB.every((d) => d === 1);
  if (!broadcastA && !broadcastB && batchA.join() !== batchB.join()) {
    throw new RangeError(`matmul: ${operands}: batch shapes ${shapeString(A.batch)} and ${shapeString(B.batch)} are neither equal nor one of them all 1s; expand the operands to a common batch shape first`);
  }
  const batchShape = broadcastA ? batchB : batchA;
  const batch = batchShape.reduce((p, d) => p * d, 1);
  // [N] or [1, …, N]: a [2, 2] bias of N = 4 values is no row vector.
  if (opts.bias && (opts.bias.size !== N || opts.bias.shape[opts.bias.rank - 1] !== N)) {
    throw new RangeError(`matmul: bias ${shapeString(opts.bias.shape)} does not match N = ${N}`);
  }
  const shape = [...batchShape, M, N];
  const label = `matmul(${a.label},${b.label})`;
  let out: Tensor;
  if (K === 0) {
    // A sum over nothing: zeros (plus the bias), with no kernel, which could not bind A and B of no values.
    const bias = opts.bias;
    out = bias ? e.noGrad(() => e.tidy(() => expand(e.view(bias, [N]), shape))) : e.zeros(shape, label);
  } else if (batch > e.limits.maxComputeWorkgroupsPerDimension) {
    out = batchChunkedMatmul(a, b, shape, label, { M, N, K, batch, transA, transB, broadcastA, broadcastB, bias: opts.bias });
  } else if (K > LONG_K) {
    out = chunkedMatmul(a, b, shape, label, { M, N, K, batch, transA, transB, broadcastA, broadcastB, bias: opts.bias });
  } else {
    out = e.empty(shape, label);
    dispatchMatmul(a, b, out, { M, N, K, batch, transA, transB, broadcastA, broadcastB, bias: opts.bias });
  }
  const inputs = opts.bias ? [a, b, opts.bias] : [a, b];
  e.tape.record('matmul', inputs, [out], [a, b], ([g]) => {
    const dC = g!;
    let dA: Tensor | null = null;
    let dB: Tensor | null = null;
    if (a.requiresGrad) {
      dA = transA ? matmul(b, dC, { transA: transB, transB: true }) : matmul(dC, b, { transB: !transB });
      if (broadcastA && batch > 1) dA = sum(dA, [...Array(dA.rank - 2).keys()]);
    }
    if (b.requiresGrad) {
      dB = transB ? matmul(dC, a, { transA: true, transB: transA }) : matmul(a, dC, { transA: !transA });
      if (broadcastB && batch > 1) dB = sum(dB, [...Array(dB.rank - 2).keys()]);
    }
    const dBias = opts.bias?.requiresGrad ? sum(dC, [...Array(dC.rank - 1).keys()]) : null;
    return opts.bias ? [dA, dB, dBias] : [dA, dB];
  });
  return out;
}
