// AdaptiveAvgPool2d (PyTorch's window rule) on NCHW. Kernel: kernels/adaptive-pool.wgsl.ts.
import { ADAPTIVE_POOL_WORKGROUP, adaptiveAvgPoolKernel } from '../../../kernels/adaptive-pool.wgsl.ts';
import { grid1d } from '../../../kernels/flat-index.ts';
import { shapeString, type Tensor } from '../tensor.ts';

export function adaptiveAvgPool2d(x: Tensor, outH: number, outW = outH): Tensor {
  const e = x.engine;
  if (x.rank !== 4) throw new RangeError(`adaptiveAvgPool2d: ${x.label} ${shapeString(x.shape)} must be [N,C,H,W]`);
  if (!(outH >= 1 && outW >= 1)) throw new RangeError(`adaptiveAvgPool2d: output size ${outH}x${outW} must be at least 1x1`);
  const [N, C, H, W] = x.shape;
  if (H === 0 || W === 0) throw new RangeError(`adaptiveAvgPool2d: ${x.label} ${shapeString(x.shape)} has no pixels to pool`);
  const params = { planes: N * C, H, W, Ho: outH, Wo: outW };
  const y = e.empty([N, C, outH, outW], `adaptiveAvgPool2d(${x.label})`);
  e.dispatch({ kernel: adaptiveAvgPoolKernel(false), bindings: [x, y], params, workgroups: grid1d(y.size, ADAPTIVE_POOL_WORKGROUP) });
  e.tape.record('adaptiveAvgPool2d', [x], [y], [], ([g]) => {
    const dx = e.empty(x.shape, 'dadaptiveAvgPool2d');
    e.dispatch({ kernel: adaptiveAvgPoolKernel(true), bindings: [g!, dx], params, workgroups: grid1d(x.size, ADAPTIVE_POOL_WORKGROUP) });
    return [dx];
  });
  return y;
}
