// The ADM U-Net's resampling inside up/down ResBlocks: 2×2 average pooling (stride 2) and nearest
// 2× upsampling, on NCHW data viewed as N·C·H rows of W. Their backward passes are each other's
// adjoints: d(avgPool)/dx spreads dy/4 over the 2×2 window, d(upsample)/dx sums the 2×2 window.
import { wgsl } from 'wgsl-preprocessor/wgsl-preprocessor.js';
import { flatBlockMain } from './flat-index.ts';
import { cachedKernelFactory, type KernelSource } from './kernel-source.ts';
import { uniformLayout } from './uniform-layout.ts';

export const RESAMPLE_WORKGROUP = 256;

/**
 * The small map (the pooled map, or the one upsampled) as rows × width: rows = N·C·H of it, each
 * row r under rows 2r and 2r + 1 of the large map (plane·2H + 2y = 2·(plane·H + y)).
 * widthShift: log2(width) where width is a power of two.
 */
const RESAMPLE_PARAMS = uniformLayout({ n: 'u32', width: 'u32', widthShift: 'u32' });

export type ResampleMode = 'avgPool2' | 'upsample2' | 'avgPool2Backward' | 'upsample2Backward';

/**
 * One invocation per element of the small map and its 2×2 window in the large one. With
 * `powerOfTwoWidth` the element's row and column are a shift and a mask: CPU adapters divide lane
 * by lane (three divisions an output element made upsample2 of [16, 64, 16, 16] take 5–9 ms on
 * lavapipe's 2 cores). Bindings: x, out.
 */
export const resampleKernel = cachedKernelFactory(function resampleKernel(mode: ResampleMode, powerOfTwoWidth: boolean): KernelSource<typeof RESAMPLE_PARAMS> {
  const WG = RESAMPLE_WORKGROUP;
  const window = '(x[top] + x[top + 1u] + x[top + wide] + x[top + wide + 1u])';
  const spread = (v: string) => `let v = ${v}; out[top] = v; out[top + 1u] = v; out[top + wide] = v; out[top + wide + 1u] = v;`;
  const body: Record<ResampleMode, string> = {
    // out is H/2 × W/2: mean of the 2×2 window (PyTorch AvgPool2d(2), H and W even).
    avgPool2: `out[i] = 0.25 * ${window};`,
    // out is 2H × 2W of x (H × W): out[y, x] = x[⌊y/2⌋, ⌊x/2⌋].
    upsample2: spread('x[i]'),
    // out (dx) is 2H × 2W of dy: each dx gets a quarter of its window's dy.
    avgPool2Backward: spread('0.25 * x[i]'),
    // out (dx) is H/2 × W/2 of dy: the sum of the 2×2 dy window it was copied to.
    upsample2Backward: `out[i] = ${window};`,
  };
  const rowAndColumn = powerOfTwoWidth
    ? 'let r = i >> u.widthShift; let c = i & (u.width - 1u);'
    : 'let r = i / u.width; let c = i - r * u.width;';
  return {
    key: `resample.${mode}${powerOfTwoWidth ? '.pow2' : ''}`,
    params: RESAMPLE_PARAMS,
    code: wgsl`
${RESAMPLE_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
${flatBlockMain(WG, 'u.n', `${rowAndColumn}
    let wide = 2u * u.width;
    let top = 2u * r * wide + 2u * c;
    ${body[mode]}`)}`,
  };
});
