// Compiles each specialised WGSL program once per device and hands out its pipeline, with the bind
// group layout its declarations give.

/** GPUShaderStage.COMPUTE (the constant may be absent before Dawn loads). */
const COMPUTE_STAGE = 0x4;

const BINDING = /@group\(0\)\s*@binding\((\d+)\)\s*var<\s*(uniform|storage\s*(?:,\s*(read|read_write))?)\s*>/g;

/**
 * The layout entries of group 0 as the kernel declares it: `var<uniform>` (binding 0, the engine's
 * uniform arena) at a dynamic offset, so one bind group serves a dispatch in any of the arena's
 * slots, and `var<storage, read>` / `read_write` as read-only or writable storage.
 */
export function bindGroupLayoutEntries(code: string, key: string): GPUBindGroupLayoutEntry[] {
  const entries: GPUBindGroupLayoutEntry[] = [];
  for (const [, binding, kind, access] of code.matchAll(BINDING)) {
    const type: GPUBufferBindingType = kind === 'uniform' ? 'uniform' : access === 'read_write' ? 'storage' : 'read-only-storage';
    entries.push({ binding: Number(binding), visibility: COMPUTE_STAGE, buffer: { type, hasDynamicOffset: type === 'uniform' } });
  }
  const uniforms = entries.filter((e) => e.buffer!.type === 'uniform');
  if (uniforms.length !== 1 || uniforms[0].binding !== 0) throw new Error(`${key}: a kernel declares its uniforms as @group(0) @binding(0) var<uniform>, and only those`);
  return entries;
}

export interface Kernel {
  pipeline: GPUComputePipeline;
  layout: GPUBindGroupLayout;
}

export class KernelRegistry {
  private kernels = new Map<string, Kernel>();

  constructor(private device: GPUDevice) {}

  /** The cached pipeline for `key`, compiling `build()` only on first use. */
  get(key: string, build: () => string): Kernel {
    let kernel = this.kernels.get(key);
    if (!kernel) {
      const code = build();
      const module = this.device.createShaderModule({ code, label: `difrep ${key}` });
      const layout = this.device.createBindGroupLayout({ entries: bindGroupLayoutEntries(code, key), label: `difrep ${key}` });
      const pipeline = this.device.createComputePipeline({
        layout: this.device.createPipelineLayout({ bindGroupLayouts: [layout], label: `difrep ${key}` }),
        compute: { module, entryPoint: 'main' },
        label: `difrep ${key}`,
      });
      this.kernels.set(key, (kernel = { pipeline, layout }));
    }
    return kernel;
  }

  has(key: string): boolean {
    return this.kernels.has(key);
  }

  get size(): number {
    return this.kernels.size;
  }
}
