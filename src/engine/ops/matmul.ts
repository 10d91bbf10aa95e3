// Batched matmul with either operand transposed and an optional bias over the last axis.
// Kernel: kernels/matmul.wgsl.ts.
//
// Backward, with A' = op(A) (M×K), B' = op(B) (K×N), C = A'·B':
//   dA' = dC·B'ᵀ and dB' = A'ᵀ·dC, so
//   dA = transA ? B'·dCᵀ : dC·B'ᵀ      dB = transB ? dCᵀ·A' : A'ᵀ·dC
// each again one matmul call with transpose flags; operands broadcast over the batch get their
// gradient summed over it.
import { chooseGemmTiling, gemmWorkgroups, matmulKernel, type MatmulTiling, vectorizableGemm, vectorizableOperands } from '../../../kernels/matmul.wgsl.ts';
import { subgroupGemmRows, subgroupGemmWorkgroups, subgroupMatmulKernel } from '../../../kernels/matmul-subgroup.wgsl.ts';
import { shapeString, type Tensor } from '../tensor.ts';
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
    e.dispatch({
      kernel: subgroupMatmulKernel({ transA: d.transA, transB: d.transB, bias: !!d.bias }, rows),
      bindings,
      params: { ...params, batches: d.batch },
      workgroups: subgroupGemmWorkgroups(rows, d.M, d.N, d.batch),
    });
    return;
  }
  const tiling: MatmulTiling = chooseGemmTiling(d.M, d.N, e.gemmPresets, e.tuning.matmul, e.limits.maxComputeWorkgroupStorageSize);
  e.dispatch({
    kernel: matmulKernel({ transA: d.transA, transB: d.transB, bias: !!d.bias, vec4: vectorizableGemm(d.M, d.N, d.K, d.transA, d.transB, tiling) }, tiling),
    bindings,
    params,
    workgroups: gemmWorkgroups(tiling, d.M, d.N, d.batch),
  });
}

export function matmul(a: Tensor, b: Tensor, opts: MatmulOptions = {}): Tensor {
  const e = a.engine;
  const transA = opts.transA ?? false;
  const transB = opts.transB ?? false;
  const A = splitBatch(a);
  const B = splitBatch(b);
  const [M, K] = transA ? [A.cols, A.rows] : [A.rows, A.cols];
  const [K2, N] = transB ? [B.cols, B.rows] : [B.rows, B.cols];
  const sizeA = A.batch.reduce((p, d) => p * d, 1);
  const sizeB = B.batch.reduce((p, d) => p * d, 1);
  const batchShape = sizeA >= sizeB ? A.batch : B.batch;
  const batch = Math.max(sizeA, sizeB);
  if (K !== K2 || (sizeA !== batch && sizeA !== 1) || (sizeB !== batch && sizeB !== 1)) {
    throw new RangeError(
      `matmul: ${a.label} ${shapeString(a.shape)}${transA ? 'ᵀ' : ''} × ${b.label} ${shapeString(b.shape)}${transB ? 'ᵀ' : ''}: inner sizes ${K} vs ${K2} or batch sizes ${sizeA} vs ${sizeB} do not match`,
    );
  }
  if (opts.bias && opts.bias.size !== N) {
    throw new RangeError(`matmul: bias ${shapeString(opts.bias.shape)} does not match N = ${N}`);
  }
  if (batch > 65535) throw new RangeError(`matmul: batch ${batch} exceeds 65535`);
  const out = e.empty([...batchShape, M, N], `matmul(${a.label},${b.label})`);
  dispatchMatmul(a, b, out, { M, N, K, batch, transA, transB, broadcastA: sizeA === 1, broadcastB: sizeB === 1, bias: opts.bias });
  const inputs = opts.bias ? [a, b, opts.bias] : [a, b];
  e.tape.record('matmul', inputs, [out], [a, b], ([g]) => {
    const dC = g!;
    let dA: Tensor | null = null;
    let dB: Tensor | null = null;
    if (a.requiresGrad) {
      dA = transA ? matmul(b, dC, { transA: transB, transB: true }) : matmul(dC, b, { transB: !transB });
      if (sizeA === 1 && batch > 1) dA = sum(dA, [...Array(dA.rank - 2).keys()]);
    }
    if (b.requiresGrad) {
      dB = transB ? matmul(dC, a, { transA: true, transB: transA }) : matmul(a, dC, { transA: !transA });
      if (sizeB === 1 && batch > 1) dB = sum(dB, [...Array(dB.rank - 2).keys()]);
    }
    const dBias = opts.bias?.requiresGrad ? sum(dC, [...Array(dC.rank - 1).keys()]) : null;
    return opts.bias ? [dA, dB, dBias] : [dA, dB];
  });
  return out;
}
