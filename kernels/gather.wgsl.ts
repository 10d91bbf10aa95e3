// gatherColumn: y[i] = x[i, columns[i]] for x [rows, n] (torch.gather(x, 1, columns[:, None])), and
// its backward dx[i, j] = (j == columns[i]) ? dy[i] : 0, written whole so no fill pass is needed.
// `columns` is a u32 array (the op uploads the indices' bits into an f32 tensor's storage).
import { wgsl } from 'wgsl-preprocessor/wgsl-preprocessor.js';
import { flatMain } from './flat-index.ts';
import { cachedKernelFactory, type KernelSource } from './kernel-source.ts';
import { uniformLayout } from './uniform-layout.ts';

export const GATHER_WORKGROUP = 256;

/** rows of x; n: its row length. */
const GATHER_PARAMS = uniformLayout({ rows: 'u32', n: 'u32' });

/** Bindings: x, columns, y. One invocation per row. */
export const gatherColumnKernel = cachedKernelFactory(function gatherColumnKernel(): KernelSource<typeof GATHER_PARAMS> {
  return {
    params: GATHER_PARAMS,
    key: 'gatherColumn',
    code: wgsl`
${GATHER_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> columns: array<u32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
${flatMain(GATHER_WORKGROUP)}
  if (i >= u.rows) { return; }
  y[i] = x[i * u.n + columns[i]];
}`,
  };
});

/** Bindings: columns, dy, dx. One invocation per element of dx. */
export const gatherColumnBackwardKernel = cachedKernelFactory(function gatherColumnBackwardKernel(): KernelSource<typeof GATHER_PARAMS> {
  return {
    params: GATHER_PARAMS,
    key: 'gatherColumnBackward',
    code: wgsl`
${GATHER_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> columns: array<u32>;
@group(0) @binding(2) var<storage, read> dy: array<f32>;
@group(0) @binding(3) var<storage, read_write> dx: array<f32>;
${flatMain(GATHER_WORKGROUP)}
  if (i >= u.rows * u.n) { return; }
  let row = i / u.n;
  dx[i] = select(0.0, dy[row], i - row * u.n == columns[row]);
}`,
  };
});
