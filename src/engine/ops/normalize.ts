// Row normalisation and LayerNorm (its affine map in the same pass). Kernels: kernels/normalize.wgsl.ts.
import { grid1d } from '../../../kernels/flat-index.ts';
import { normalizeRowsBackwardKernel, normalizeRowsKernel } from '../../../kernels/normalize.wgsl.ts';
import { type RowParallelism, THREAD_MODE_WORKGROUP } from '../../../kernels/row-reduction.ts';
import type { Engine } from '../engine.ts';
import { shapeString, type Tensor } from '../tensor.ts';
import { mul } from './elementwise.ts';
import { reshape } from './layout.ts';
import { sum } from './reduce.ts';

/**
 * A thread per row on CPU adapters once there are enough rows to fill the cores (a workgroup's
 * barriers cost more there than the sums: GroupNorm of [50, 64, 8, 8] 63 ms → see bench), a
 * workgroup per row elsewhere, combining through subgroups where the engine can
 * (Engine.subgroupReductions). Tunable: tuning.rows.threadPerRowFrom (rows; 0 = never) and
 * tuning.rows.subgroups (0: the workgroup-memory tree instead).
 */
export function rowParallelism(e: Engine, rows: number): { mode: RowParallelism; workgroups: [number, number] } {
  const from = e.tuning.rows?.threadPerRowFrom ?? (e.cpuAdapter ? 16 : 0);
  if (from > 0 && rows >= from) return { mode: 'thread', workgroups: grid1d(rows, THREAD_MODE_WORKGROUP) };
  return { mode: workgroupCombine(e), workgroups: grid1d(rows, 1) };
}

/** How a workgroup-per-row reduction combines its threads' sums on this engine. */
export function workgroupCombine(e: Engine): 'subgroup' | 'workgroup' {
  return e.subgroupReductions && e.tuning.rows?.subgroups !== 0 ? 'subgroup' : 'workgroup';
}

/** x viewed as [rows, D] (D = the last `D` elements of each row) → (x − mean)/sqrt(var + eps) per row. */
export function normalizeRows(x: Tensor, D: number, eps = 1e-5): Tensor {
  const e = x.engine;
  if (D <= 0 || x.size % D !== 0) throw new RangeError(`normalizeRows: ${x.label} ${shapeString(x.shape)} does not split into rows of ${D}`);
  const rows = x.size / D;
  const xhat = e.empty(x.shape, `normalize(${x.label})`);
  const stats = e.empty([rows, 2], 'normalize.stats');
  const par = rowParallelism(e, rows);
  const width = D % 4 === 0 ? 4 : 1;
  e.dispatch({
    kernel: normalizeRowsKernel(par.mode, width),
    bindings: [x, xhat, stats],
    params: { rows, D: D / width, eps },
    workgroups: par.workgroups,
  });
  if (!e.tape.needsGrad([x])) {
    stats.dispose();
    return xhat;
  }
  e.tape.record('normalizeRows', [x], [xhat], [xhat, stats], ([g]) => [normalizeRowsBackward(xhat, stats, g!, D)]);
  stats.dispose(); // the tape holds it until backward
  return xhat;
}

/** dL/dx of x̂ = normalizeRows(x, D) from dL/dx̂ = g, given x̂ and its rows' stats. */
function normalizeRowsBackward(xhat: Tensor, stats: Tensor, g: Tensor, D: number): Tensor {
  const e = xhat.engine;
  const rows = xhat.size / D;
  const width = D % 4 === 0 ? 4 : 1;
  const par = rowParallelism(e, rows);
  const dx = e.empty(xhat.shape, 'dnormalize');
  e.dispatch({
    kernel: normalizeRowsBackwardKernel(par.mode, width),
    bindings: [xhat, stats, g, dx],
    params: { rows, D: D / width },
    workgroups: par.workgroups,
  });
  return dx;
}

/**
 * LayerNorm over the trailing dims of `weight`'s shape (PyTorch nn.LayerNorm(normalized_shape)): the
 * normalisation and the affine y = x̂·γ + β in one pass (they were three: 10 % of a copy's speed).
 * Backward: dβ = Σ_rows g, dγ = Σ_rows g·x̂, and dx from dx̂ = g·γ as normalizeRows's.
 */
export function layerNorm(x: Tensor, weight: Tensor, bias: Tensor, eps = 1e-5): Tensor {
  const e = x.engine;
  const r = weight.rank;
  const trailing = x.shape.slice(x.rank - r);
  if (trailing.join() !== weight.shape.join() || bias.shape.join() !== weight.shape.join()) {
    throw new RangeError(`layerNorm: ${x.label} ${shapeString(x.shape)} does not end in the affine shape ${shapeString(weight.shape)} (bias ${shapeString(bias.shape)})`);
  }
  const D = weight.size;
  if (D === 0) throw new RangeError(`layerNorm: the normalised shape ${shapeString(weight.shape)} of ${x.label} has no values`);
  const rows = x.size / D;
  const grads = e.tape.needsGrad([x, weight, bias]);
  const y = e.empty(x.shape, `layerNorm(${x.label})`);
  const stats = e.empty([rows, 2], 'layerNorm.stats');
  const xhat = grads ? e.empty(x.shape, 'layerNorm.xhat') : undefined;
  const par = rowParallelism(e, rows);
  const width = D % 4 === 0 ? 4 : 1;
  e.dispatch({
    kernel: normalizeRowsKernel(par.mode, width, xhat ? 'affineKeepXhat' : 'affine'),
    bindings: [x, y, stats, weight, bias, ...(xhat ? [xhat] : [])],
    params: { rows, D: D / width, eps },
    workgroups: par.workgroups,
  });
  if (!xhat) {
    stats.dispose();
    return y;
  }
  e.tape.record('layerNorm', [x, weight, bias], [y], [xhat, stats, weight], ([g]) => {
    const perRow = (t: Tensor) => reshape(t, [rows, D]);
    return [normalizeRowsBackward(xhat, stats, mul(g!, weight), D), sum(perRow(mul(g!, xhat)), [0]), sum(perRow(g!), [0])];
  });
  xhat.dispose(); // the tape holds both until backward
  stats.dispose();
  return y;
}
