// Bind groups reused across dispatches. Recording one (Dawn's createBindGroup) cost 10–40 µs of the
// main thread on a CPU, more than the rest of a dispatch once kernels were built once
// (kernels/kernel-source.ts, cachedKernelFactory). A bind group is immutable, so a dispatch of the
// same pipeline over the same buffer ranges (the uniform arena's slot included) can take the one
// made before; training and inference loops ask for the same ones step after step, since the buffer
// pool hands out its buffers in the same order when the ops come in the same order, and each step
// starts a command batch of its own, so its uniforms take the same slots (Engine.settle).

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

  /**
   * Full at `maxEntries`, the cache keeps the ones it has and takes no more (a dispatch past them
   * makes its own, as without a cache; a later phase's loop gets its own kept after releasePooled,
   * which empties the cache with the pool). It never drops one to make room: on lavapipe a bind group
   * holds a memory mapping until its wrapper is garbage-collected, which for one kept a while waits
   * for a full collection, so a cache that started over when full left thousands of dropped ones
   * holding mappings (of 4,096 places, after 8,000 bind groups made: 4,063 kept, 8,800 mappings in
   * the process, of the 65,530 it may have; kept as now, 6,200).
   */
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
    if (this.groups.size < this.maxEntries) this.groups.set(key, group);
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
