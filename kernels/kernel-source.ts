// What every kernel module hands the engine: one WGSL program specialised for one set of
// compile-time options, with the uniform struct it reads declared once (./uniform-layout.ts). The
// engine (src/engine/kernel-registry.ts) compiles each key once per device and packs an op's named
// uniform values through `params`.
import type { UniformFields, UniformLayout, UniformValues } from './uniform-layout.ts';

/** A WGSL program specialised for one set of compile-time options (tile sizes, flags). */
export interface KernelSource<L extends UniformLayout = UniformLayout> {
  /** Unique per distinct WGSL text: family name plus every option that changes the code. */
  key: string;
  code: string;
  /** The `var<uniform> u` at @binding(0): the layout whose `wgsl` the code declares. */
  params: L;
}

/** The named values a kernel's uniform layout takes. */
export type ParamsOf<L extends UniformLayout> = L extends UniformLayout<infer F extends UniformFields> ? UniformValues<F> : never;
