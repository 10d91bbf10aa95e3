// Softmax and log-softmax over the last axis, a thread or a workgroup per row (rowParallelism).
// Kernels: kernels/softmax.wgsl.ts; both backward rules read only the forward output y (see
// softmaxBackwardKernel).
import { softmaxBackwardKernel, softmaxKernel } from '../../../kernels/softmax.wgsl.ts';
import type { Tensor } from '../tensor.ts';
import { rowParallelism } from './normalize.ts';

export interface SoftmaxOptions {
  /**
   * Logits are scale·x (default 1): attention's 1/√d folded into the softmax's own passes, not a
   * pass over the T × T logits forward and another backward.
   */
  scale?: number;
}

function run(x: Tensor, log: boolean, { scale = 1 }: SoftmaxOptions): Tensor {
  const e = x.engine;
  if (x.rank === 0) throw new RangeError(`${log ? 'logSoftmax' : 'softmax'}: ${x.label} is a scalar`);
  const n = x.shape[x.rank - 1];
  const rows = x.size / Math.max(1, n);
  const y = e.empty(x.shape, `${log ? 'logSoftmax' : 'softmax'}(${x.label})`);
  const width = n % 4 === 0 ? 4 : 1;
  const params = { rows, n: n / width, scale };
  const par = rowParallelism(e, rows);
  e.dispatch({ kernel: softmaxKernel(log, par.mode, width), bindings: [x, y], params, workgroups: par.workgroups });
  e.tape.record(log ? 'logSoftmax' : 'softmax', [x], [y], [y], ([dy]) => {
    const dx = e.empty(x.shape, 'dsoftmax');
    e.dispatch({ kernel: softmaxBackwardKernel(log, par.mode, width), bindings: [y, dy!, dx], params, workgroups: par.workgroups });
    return [dx];
  });
  return y;
}

export const softmax = (x: Tensor, opts: SoftmaxOptions = {}) => run(x, false, opts);
export const logSoftmax = (x: Tensor, opts: SoftmaxOptions = {}) => run(x, true, opts);
