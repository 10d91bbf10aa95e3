// Row normalisation and LayerNorm. Kernels: kernels/normalize.wgsl.ts. LayerNorm's affine map is
// broadcast arithmetic on top, so its weight and bias gradients come from the elementwise rules.
import { normalizeRowsBackwardKernel, normalizeRowsKernel } from '../../../kernels/normalize.wgsl.ts';
import { shapeString, type Tensor } from '../tensor.ts';
import { grid1d, Uniforms } from '../uniforms.ts';
import { add, mul } from './elementwise.ts';

/** x viewed as [rows, D] (D = the last `D` elements of each row) → (x − mean)/sqrt(var + eps) per row. */
export function normalizeRows(x: Tensor, D: number, eps = 1e-5): Tensor {
  const e = x.engine;
  if (D <= 0 || x.size % D !== 0) throw new RangeError(`normalizeRows: ${x.label} ${shapeString(x.shape)} does not split into rows of ${D}`);
  const rows = x.size / D;
  const xhat = e.empty(x.shape, `normalize(${x.label})`);
  const stats = e.empty([rows, 2], 'normalize.stats');
  e.dispatch({
    kernel: normalizeRowsKernel(),
    bindings: [x, xhat, stats],
    uniforms: new Uniforms().u32(rows, D).f32(eps).toArrayBuffer(),
    workgroups: grid1d(rows, 1),
  });
  if (!e.tape.needsGrad([x])) {
    stats.dispose();
    return xhat;
  }
  e.tape.record('normalizeRows', [x], [xhat], [xhat, stats], ([g]) => {
    const dx = e.empty(x.shape, 'dnormalize');
    e.dispatch({
      kernel: normalizeRowsBackwardKernel(),
      bindings: [xhat, stats, g!, dx],
      uniforms: new Uniforms().u32(rows, D).toArrayBuffer(),
      workgroups: grid1d(rows, 1),
    });
    return [dx];
  });
  stats.dispose(); // the tape holds it until backward
  return xhat;
}

/** LayerNorm over the trailing dims of `weight`'s shape (PyTorch nn.LayerNorm(normalized_shape)). */
export function layerNorm(x: Tensor, weight: Tensor, bias: Tensor, eps = 1e-5): Tensor {
  const r = weight.rank;
  const trailing = x.shape.slice(x.rank - r);
  if (trailing.join() !== weight.shape.join() || bias.shape.join() !== weight.shape.join()) {
    throw new RangeError(`layerNorm: ${x.label} ${shapeString(x.shape)} does not end in the affine shape ${shapeString(weight.shape)} (bias ${shapeString(bias.shape)})`);
  }
  return x.engine.tidy(() => add(mul(normalizeRows(x, weight.size, eps), weight), bias));
}
