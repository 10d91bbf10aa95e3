// Row normalisation and LayerNorm. Kernels: kernels/normalize.wgsl.ts. LayerNorm's affine map is
// broadcast arithmetic on top, so its weight and bias gradients come from the elementwise rules.
import { grid1d } from '../../../kernels/flat-index.ts';
import { normalizeRowsBackwardKernel, normalizeRowsKernel } from '../../../kernels/normalize.wgsl.ts';
import { type RowParallelism, THREAD_MODE_WORKGROUP } from '../../../kernels/row-reduction.ts';
import type { Engine } from '../engine.ts';
import { shapeString, type Tensor } from '../tensor.ts';
import { add, mul } from './elementwise.ts';

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
  e.tape.record('normalizeRows', [x], [xhat], [xhat, stats], ([g]) => {
    const dx = e.empty(x.shape, 'dnormalize');
    e.dispatch({
      kernel: normalizeRowsBackwardKernel(par.mode, width),
      bindings: [xhat, stats, g!, dx],
      params: { rows, D: D / width },
      workgroups: par.workgroups,
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
