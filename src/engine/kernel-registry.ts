// Compiles each specialised WGSL program once per device and hands out its pipeline.

export class KernelRegistry {
  private pipelines = new Map<string, GPUComputePipeline>();

  constructor(private device: GPUDevice) {}

  /** The cached pipeline for `key`, compiling `build()` only on first use. */
  get(key: string, build: () => string): GPUComputePipeline {
    let pipeline = this.pipelines.get(key);
    if (!pipeline) {
      const code = build();
      const module = this.device.createShaderModule({ code, label: `difrep ${key}` });
      pipeline = this.device.createComputePipeline({
        layout: 'auto',
        compute: { module, entryPoint: 'main' },
        label: `difrep ${key}`,
      });
      this.pipelines.set(key, pipeline);
    }
    return pipeline;
  }

  has(key: string): boolean {
    return this.pipelines.has(key);
  }

  get size(): number {
    return this.pipelines.size;
  }
}
