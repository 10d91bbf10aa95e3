// Batched matmul with either operand transposed and an optional bias over the last axis.
// Kernel: kernels/matmul.wgsl.ts.
//
// Backward, with A' = op(A) (M×K), B' = op(B) (K×N), C = A'·B':
//   dA' = dC·B'ᵀ and dB' = A'ᵀ·dC, so
//   dA = transA ? B'·dCᵀ : dC·B'ᵀ      dB = transB ? dCᵀ·A' : A'ᵀ·dC
// each again one matmul call with transpose flags; operands broadcast over the batch get their
// gradient summed over it.
import { chooseGemmTiling, type MatmulTiling, matmulKernel } from '../../../kernels/matmul.wgsl.ts';
import { shapeString, type Tensor } from '../tensor.ts';
import { Uniforms } from '../uniforms.ts';
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
  const tiling: MatmulTiling = chooseGemmTiling(M, N, e.adapterClass === 'llvmpipe', e.tuning.matmul, e.limits.maxComputeWorkgroupStorageSize);
  const out = e.empty([...batchShape, M, N], `matmul(${a.label},${b.label})`);
  const bm = tiling.wgY * tiling.tm;
  const bn = tiling.wgX * tiling.tn;
  e.dispatch({
    kernel: matmulKernel({ transA, transB, bias: !!opts.bias }, tiling),
    bindings: opts.bias ? [a, b, out, opts.bias] : [a, b, out],
    uniforms: new Uniforms().u32(M, N, K, sizeA === 1 ? 0 : M * K, sizeB === 1 ? 0 : K * N).toArrayBuffer(),
    workgroups: [Math.ceil(N / bn), Math.ceil(M / bm), batch],
  });
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
