// GroupNorm with the ADM U-Net's fusions (scale-shift norm, SiLU). Kernel: kernels/groupnorm.wgsl.ts.
import { groupNormKernel } from '../../../kernels/groupnorm.wgsl.ts';
import { shapeString, type Tensor } from '../tensor.ts';
import { Uniforms } from '../uniforms.ts';
import { add, addScalar, mul, silu } from './elementwise.ts';
import { reshape, slice } from './layout.ts';
import { normalizeRows, rowParallelism } from './normalize.ts';

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
  const inputs = [x, gamma, beta, ...(opts.scaleShift ? [opts.scaleShift] : [])];
  if (e.tape.needsGrad(inputs)) return groupNormComposite(x, gamma, beta, groups, opts);
  const y = e.empty(x.shape, `groupNorm(${x.label})`);
  const bindings = [x, gamma, beta, y];
  if (opts.scaleShift) bindings.push(opts.scaleShift);
  const par = rowParallelism(e, N * groups);
  e.dispatch({
    kernel: groupNormKernel({ scaleShift: !!opts.scaleShift, silu: !!opts.silu }, par.mode),
    bindings,
    uniforms: new Uniforms().u32(C, HW, groups).f32(opts.eps ?? 1e-5).u32(N * groups).toArrayBuffer(),
    workgroups: par.workgroups,
  });
  return y;
}

/**
 * The same function from differentiable pieces, used when gradients are wanted: each group is a
 * row of (C/G)·H·W values for normalizeRows, then γ/β, scale-shift and SiLU as broadcast ops.
 */
function groupNormComposite(x: Tensor, gamma: Tensor, beta: Tensor, groups: number, opts: GroupNormOptions): Tensor {
  const e = x.engine;
  const [N, C] = x.shape;
  return e.tidy(() => {
    const xhat = reshape(normalizeRows(x, x.size / (N * groups), opts.eps ?? 1e-5), [N, C, -1]);
    let y = add(mul(xhat, reshape(gamma, [C, 1])), reshape(beta, [C, 1]));
    if (opts.scaleShift) {
      const ss = reshape(opts.scaleShift, [N, 2, C, 1]);
      const scale = reshape(slice(ss, [0, 0], [N, 1]), [N, C, 1]);
      const shift = reshape(slice(ss, [0, 1], [N, 2]), [N, C, 1]);
      y = add(mul(y, addScalar(scale, 1)), shift);
    }
    if (opts.silu) y = silu(y);
    return reshape(y, x.shape);
  });
}
