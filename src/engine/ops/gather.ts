// gatherColumn: one value per row, at a column given per row (torch.gather along the last axis
// with one index per row). Kernels: kernels/gather.wgsl.ts; the backward puts dy back at those
// columns and zeros everywhere else.
import { GATHER_WORKGROUP, gatherColumnBackwardKernel, gatherColumnKernel } from '../../../kernels/gather.wgsl.ts';
import { grid1d } from '../../../kernels/flat-index.ts';
import { shapeString, type Tensor } from '../tensor.ts';

/** y[i] = x[i, columns[i]] for x [rows, n]; y is [rows]. */
export function gatherColumn(x: Tensor, columns: readonly number[]): Tensor {
  const e = x.engine;
  const [rows, n] = x.shape;
  if (x.rank !== 2 || columns.length !== rows) {
    throw new RangeError(`gatherColumn: ${x.label} ${shapeString(x.shape)} with ${columns.length} columns (one per row of a 2-D tensor expected)`);
  }
  columns.forEach((c, i) => {
    if (!Number.isInteger(c) || c < 0 || c >= n) throw new RangeError(`gatherColumn: column ${c} of row ${i} is outside 0..${n - 1}`);
  });
  // The indices' u32 bits in an f32 tensor's storage (the kernels bind it as array<u32>), so the
  // engine's pool owns it like any other tensor (tidy frees it unless the backward holds it).
  return e.tidy(() => {
    const indices = e.tensor(new Float32Array(Uint32Array.from(columns).buffer), [rows], 'gatherColumn.columns');
    const params = { rows, n };
    const y = e.empty([rows], `gatherColumn(${x.label})`);
    e.dispatch({ kernel: gatherColumnKernel(), bindings: [x, indices, y], params, workgroups: grid1d(rows, GATHER_WORKGROUP) });
    e.tape.record('gatherColumn', [x], [y], [indices], ([dy]) => {
      const dx = e.empty(x.shape, 'dgatherColumn');
      e.dispatch({ kernel: gatherColumnBackwardKernel(), bindings: [indices, dy!, dx], params, workgroups: grid1d(rows * n, GATHER_WORKGROUP) });
      return [dx];
    });
    return y;
  });
}
