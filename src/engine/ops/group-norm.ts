// GroupNorm with the ADM U-Net's fusions (scale-shift norm, SiLU). Kernel: kernels/groupnorm.wgsl.ts.
import { groupNormBackwardKernel, groupNormKernel } from '../../../kernels/groupnorm.wgsl.ts';
import { shapeString, type Tensor } from '../tensor.ts';
import { reshape, sliceRows } from './layout.ts';
import { rowParallelism } from './normalize.ts';
import { sum } from './reduce.ts';

export interface GroupNormOptions {
  groups?: number;
  eps?: number;
  /** [N, 2C] = [scale | shift]: y ← y·(1 + scale) + shift (guided-diffusion's use_scale_shift_norm). */
  scaleShift?: Tensor;
  /** Apply SiLU to the result. */
  silu?: boolean;
}

export function groupNorm(x: Tensor, gamma: Tensor, beta: Tensor, opts: GroupNormOptions = {}): Tensor {
  const e = x.engine;
  const groups = opts.groups ?? 32;
  if (x.rank < 2) throw new RangeError(`groupNorm: ${x.label} ${shapeString(x.shape)} needs [N, C, ...]`);
  const [N, C] = x.shape;
  const HW = x.shape.slice(2).reduce((a, b) => a * b, 1);
  if (N > 0 && C === 0) throw new RangeError(`groupNorm: ${x.label} ${shapeString(x.shape)} has no channels to normalise`);
  if (N > 0 && HW === 0) throw new RangeError(`groupNorm: ${x.label} ${shapeString(x.shape)} has no pixels to normalise`);
  if (C % groups !== 0) throw new RangeError(`groupNorm: ${C} channels of ${x.label} do not split into ${groups} groups`);
  if (gamma.size !== C || beta.size !== C) {
    throw new RangeError(`groupNorm: affine ${gamma.label} ${shapeString(gamma.shape)} / ${beta.label} ${shapeString(beta.shape)} do not match ${C} channels of ${x.label}`);
  }
  // [N, 2C] (or [N, 2C, 1, 1]): a [N, C, 2] of the same size interleaves scale and shift.
  const ss = opts.scaleShift?.shape;
  if (ss && !(ss[0] === N && ss[1] === 2 * C && ss.slice(2).every((d) => d === 1))) {
    throw new RangeError(`groupNorm: scale-shift ${shapeString(ss)} is not [${N}, ${2 * C}]`);
  }
  const scaleShift = opts.scaleShift;
  const variant = { scaleShift: !!scaleShift, silu: !!opts.silu, width: HW % 4 === 0 ? 4 : 1 } as const;
  const eps = opts.eps ?? 1e-5;
  const y = e.empty(x.shape, `groupNorm(${x.label})`);
  const par = rowParallelism(e, N * groups);
  const params = { C, HW, groups, eps, rows: N * groups };
  e.dispatch({
    kernel: groupNormKernel(variant, par.mode),
    bindings: scaleShift ? [x, gamma, beta, y, scaleShift] : [x, gamma, beta, y],
    params,
    workgroups: par.workgroups,
  });
  const inputs = scaleShift ? [x, gamma, beta, scaleShift] : [x, gamma, beta];
  // Backward: one fused kernel (kernels/groupnorm.wgsl.ts has the equations) that recomputes the
  // statistics, then γ's and β's per-image sums added up over the images.
  e.tape.record('groupNorm', inputs, [y], inputs, ([dy]) => {
    const dx = e.empty(x.shape, `dgroupNorm(${x.label})`);
    const dAffine = e.empty([N, 2 * C], 'dgroupNorm.affine');
    const dE = scaleShift ? e.empty([N, 2 * C], 'dgroupNorm.scaleShift') : null;
    e.dispatch({
      kernel: groupNormBackwardKernel(variant, par.mode),
      bindings: scaleShift ? [x, gamma, beta, dy!, dx, dAffine, scaleShift, dE!] : [x, gamma, beta, dy!, dx, dAffine],
      params,
      workgroups: par.workgroups,
    });
    // An empty batch (N = 0) sums no images: γ's and β's gradients are zeros, as PyTorch's.
    const affine = reshape(N === 1 ? dAffine : sum(dAffine, [0]), [2, C]);
    return [dx, sliceRows(affine, 0, 1), sliceRows(affine, 1, 2), ...(dE ? [dE] : [])];
  });
  return y;
}
