// 2×2 average pooling and nearest 2× upsampling (NCHW); each one's backward is the other's
// adjoint kernel. Kernels: kernels/resample.wgsl.ts.
import { blockGrid } from '../../../kernels/flat-index.ts';
import { RESAMPLE_WORKGROUP, type ResampleMode, resampleKernel } from '../../../kernels/resample.wgsl.ts';
import { shapeString, type Tensor } from '../tensor.ts';

function run(mode: ResampleMode, x: Tensor, outShape: number[]): Tensor {
  const e = x.engine;
  const out = e.empty(outShape, `${mode}(${x.label})`);
  const shrinks = mode === 'avgPool2' || mode === 'upsample2Backward';
  const small = shrinks ? out : x;
  const width = small.shape[3];
  const powerOfTwoWidth = width > 0 && (width & (width - 1)) === 0;
  e.dispatch({
    kernel: resampleKernel(mode, powerOfTwoWidth),
    bindings: [x, out],
    params: { n: small.size, width, widthShift: powerOfTwoWidth ? Math.log2(width) : 0 },
    workgroups: blockGrid(small.size, RESAMPLE_WORKGROUP),
  });
  return out;
}

function check(x: Tensor, op: string): [number, number, number, number] {
  if (x.rank !== 4) throw new RangeError(`${op}: ${x.label} ${shapeString(x.shape)} must be [N,C,H,W]`);
  return x.shape as [number, number, number, number];
}

/** PyTorch AvgPool2d(kernel 2, stride 2); H and W must be even. */
export function avgPool2(x: Tensor): Tensor {
  const [N, C, H, W] = check(x, 'avgPool2');
  if (H % 2 || W % 2) throw new RangeError(`avgPool2: ${x.label} ${shapeString(x.shape)} needs even H and W`);
  const y = run('avgPool2', x, [N, C, H / 2, W / 2]);
  x.engine.tape.record('avgPool2', [x], [y], [], ([g]) => [run('avgPool2Backward', g!, [N, C, H, W])]);
  return y;
}

/** Nearest-neighbour 2× upsampling (F.interpolate(scale_factor=2, mode="nearest")). */
export function upsample2(x: Tensor): Tensor {
  const [N, C, H, W] = check(x, 'upsample2');
  const y = run('upsample2', x, [N, C, 2 * H, 2 * W]);
  x.engine.tape.record('upsample2', [x], [y], [], ([g]) => [run('upsample2Backward', g!, [N, C, H, W])]);
  return y;
}
