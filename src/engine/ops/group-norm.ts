// GroupNorm with the ADM U-Net's fusions (scale-shift norm, SiLU). Kernel: kernels/groupnorm.wgsl.ts.
import { groupNormKernel } from '../../../kernels/groupnorm.wgsl.ts';
import { shapeString, type Tensor } from '../tensor.ts';
import { Uniforms } from '../uniforms.ts';

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
  const HW = x.size / (N * C);
  if (C % groups !== 0) throw new RangeError(`groupNorm: ${C} channels of ${x.label} do not split into ${groups} groups`);
  if (gamma.size !== C || beta.size !== C) {
    throw new RangeError(`groupNorm: affine ${gamma.label} ${shapeString(gamma.shape)} / ${beta.label} ${shapeString(beta.shape)} do not match ${C} channels of ${x.label}`);
  }
  if (opts.scaleShift && opts.scaleShift.size !== N * 2 * C) {
    throw new RangeError(`groupNorm: scale-shift ${shapeString(opts.scaleShift.shape)} is not [${N}, ${2 * C}]`);
  }
  const y = e.empty(x.shape, `groupNorm(${x.label})`);
  const stats = e.empty([N * groups, 2], 'groupNorm.stats');
  const bindings = [x, gamma, beta, y, stats];
  if (opts.scaleShift) bindings.push(opts.scaleShift);
  e.dispatch({
    kernel: groupNormKernel({ scaleShift: !!opts.scaleShift, silu: !!opts.silu }),
    bindings,
    uniforms: new Uniforms().u32(C, HW, groups).f32(opts.eps ?? 1e-5).toArrayBuffer(),
    workgroups: [N * groups],
  });
  stats.dispose();
  const inputs = [x, gamma, beta, ...(opts.scaleShift ? [opts.scaleShift] : [])];
  e.tape.record('groupNorm', inputs, [y], [], () => {
    throw new Error('groupNorm backward is not implemented yet (the heads issue adds it)');
  });
  return y;
}
