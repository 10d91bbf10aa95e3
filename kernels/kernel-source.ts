// What every kernel module hands the engine: one WGSL program specialised for one set of
// compile-time options. The engine (src/engine/kernel-registry.ts) compiles each key once per device.

/** A WGSL program specialised for one set of compile-time options (tile sizes, flags). */
export interface KernelSource {
  /** Unique per distinct WGSL text: family name plus every option that changes the code. */
  key: string;
  code: string;
}
