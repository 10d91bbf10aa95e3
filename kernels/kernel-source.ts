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

/**
 * A kernel factory that builds each specialisation once per process. Ops ask for their kernel on
 * every dispatch (its key finds the compiled pipeline), and generating the WGSL each time cost
 * more than recording the dispatch: about 60 µs a subgroup GEMM (its unrolled steps and the
 * preprocessor), about 40 % of the main thread's time in a training step of the reference U-Net.
 * Factories are pure functions of plain-data arguments (flags, sizes, variant objects), so
 * arguments equal as JSON give the same source; the sources handed out are frozen, being shared.
 */
export function cachedKernelFactory<F extends (...args: never[]) => KernelSource<UniformLayout>>(build: F): F {
  const built = new Map<string, ReturnType<F>>();
  const cached = (...args: Parameters<F>): ReturnType<F> => {
    const key = JSON.stringify(args);
    const known = built.get(key);
    if (known) return known;
    const kernel = Object.freeze(build(...args)) as ReturnType<F>;
    built.set(key, kernel);
    return kernel;
  };
  return cached as unknown as F;
}
