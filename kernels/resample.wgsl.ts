// The ADM U-Net's resampling inside up/down ResBlocks: 2×2 average pooling (stride 2) and nearest
// 2× upsampling, on NCHW data viewed as [N·C, H, W] planes. Their backward passes are each other's
// adjoints: d(avgPool)/dx spreads dy/4 over the 2×2 window, d(upsample)/dx sums the 2×2 window.
import { wgsl } from 'wgsl-preprocessor/wgsl-preprocessor.js';
import { flatMain } from './flat-index.ts';
import { cachedKernelFactory, type KernelSource } from './kernel-source.ts';
import { uniformLayout } from './uniform-layout.ts';

export const RESAMPLE_WORKGROUP = 256;

const RESAMPLE_PARAMS = uniformLayout({ planes: 'u32', Hout: 'u32', Wout: 'u32' });

export type ResampleMode = 'avgPool2' | 'upsample2' | 'avgPool2Backward' | 'upsample2Backward';

/**
 * One thread per output element. Uniforms: planes (N·C), Hout, Wout of the *output*.
 * Bindings: x, out.
 */
export const resampleKernel = cachedKernelFactory(function resampleKernel(mode: ResampleMode): KernelSource<typeof RESAMPLE_PARAMS> {
  const WG = RESAMPLE_WORKGROUP;
  const expr: Record<ResampleMode, string> = {
    // out is H/2 × W/2: mean of the 2×2 window (PyTorch AvgPool2d(2), H and W even).
    avgPool2: '0.25 * (x[i00] + x[i00 + 1u] + x[i00 + Win] + x[i00 + Win + 1u])',
    // out is 2H × 2W of x (H × W): out[y, x] = x[⌊y/2⌋, ⌊x/2⌋].
    upsample2: 'x[(plane * Hin + oy / 2u) * Win + ox / 2u]',
    // out (dx) is 2H × 2W of dy: each dx gets a quarter of its window's dy.
    avgPool2Backward: '0.25 * x[(plane * Hin + oy / 2u) * Win + ox / 2u]',
    // out (dx) is H/2 × W/2 of dy: the sum of the 2×2 dy window it was copied to.
    upsample2Backward: 'x[i00] + x[i00 + 1u] + x[i00 + Win] + x[i00 + Win + 1u]',
  };
  const shrinks = mode === 'avgPool2' || mode === 'upsample2Backward';
  return {
    key: `resample.${mode}`,
    params: RESAMPLE_PARAMS,
    code: wgsl`
${RESAMPLE_PARAMS.wgsl}
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
${flatMain(WG)}
  if (i >= u.planes * u.Hout * u.Wout) { return; }
  let ox = i % u.Wout;
  let oy = (i / u.Wout) % u.Hout;
  let plane = i / (u.Wout * u.Hout);
#if ${shrinks}
  let Hin = u.Hout * 2u;
  let Win = u.Wout * 2u;
  let i00 = (plane * Hin + oy * 2u) * Win + ox * 2u;
#else
  let Hin = u.Hout / 2u;
  let Win = u.Wout / 2u;
#endif
  _ = Hin;
  out[i] = ${expr[mode]};
}`,
  };
});
