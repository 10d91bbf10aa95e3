// Bind groups reused across dispatches. Recording one (Dawn's createBindGroup) cost 10–40 µs of the
// main thread on a CPU, more than the rest of a dispatch once kernels were built once
// (kernels/kernel-source.ts, cachedKernelFactory). A bind group is immutable, so a dispatch of the
// same pipeline over the same buffer ranges (the uniform arena's slot included) can take the one
// made before; training and inference loops ask for the same ones step after step, since the buffer
// pool hands out its buffers in the same order when the ops come in the same order.

/** One @binding's buffer range, as a GPUBufferBinding with the offset and size filled in. */
export interface BufferRange {
  buffer: GPUBuffer;
  offset: number;
  size: number;
}

export class BindGroupCache {
  private readonly ids = new WeakMap<GPUBuffer, number>();
  private nextId = 1;
  private readonly groups = new Map<string, GPUBindGroup>();

  /** Past `maxEntries` the cache starts over: a loop's set is rebuilt in one pass. */
  constructor(private readonly maxEntries: number) {}

  /** The key of `pipeline` (a kernel key) over `ranges`, @binding(0) first. */
  key(pipeline: string, ranges: readonly BufferRange[]): string {
    let key = pipeline;
    for (const r of ranges) key += `|${this.idOf(r.buffer)}:${r.offset}:${r.size}`;
    return key;
  }

  get(key: string): GPUBindGroup | undefined {
    return this.groups.get(key);
  }

  set(key: string, group: GPUBindGroup): void {
    if (this.groups.size >= this.maxEntries) this.groups.clear();
    this.groups.set(key, group);
  }

  /** Drops every bind group (the buffers they name are being destroyed). */
  clear(): void {
    this.groups.clear();
  }

  get size(): number {
    return this.groups.size;
  }

  private idOf(buffer: GPUBuffer): number {
    let id = this.ids.get(buffer);
    if (id === undefined) this.ids.set(buffer, (id = this.nextId++));
    return id;
  }
}
