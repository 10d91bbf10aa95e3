// Reuses freed storage buffers by size class so a forward pass allocates almost nothing after its
// first run, and reports live and peak bytes.

const USAGE_STORAGE = 0x80 | 0x04 | 0x08; // STORAGE | COPY_SRC | COPY_DST (GPUBufferUsage may be absent before Dawn loads)

/** Size classes: multiples of 256 B below 4 KiB, then 2^k and 1.5·2^k (at most a third wasted). */
export function sizeClass(bytes: number): number {
  const b = Math.max(16, bytes);
  if (b <= 4096) return Math.ceil(b / 256) * 256;
  const p = 2 ** Math.floor(Math.log2(b));
  if (b === p) return p;
  if (b <= p * 1.5) return p * 1.5;
  return p * 2;
}

export interface PoolStats {
  /** Bytes in buffers handed out and not yet released. */
  liveBytes: number;
  /** Highest liveBytes seen since creation or the last resetPeak(). */
  peakBytes: number;
  /** Bytes held in free lists, ready for reuse. */
  pooledBytes: number;
  allocations: number;
  reuses: number;
}

/**
 * Makes a GPU buffer: the engine passes device.createBuffer inside its error scopes, so an
 * out-of-memory there is reported by the engine's next read or sync, not by the app's handler.
 */
export type CreateBuffer = (descriptor: GPUBufferDescriptor) => GPUBuffer;

export class BufferPool {
  /** Each size class's free buffers, in descending order of `order`: the last is handed out next. */
  private free = new Map<number, GPUBuffer[]>();
  private live = new Set<GPUBuffer>();
  /**
   * Creation order of each buffer the pool made (the allocation count before it). A size class
   * hands out its earliest free buffer, so which buffer an op gets depends on the sequence of
   * acquires and releases alone, not on the order earlier tensors happened to be freed in: a loop's
   * second step gets the first step's buffers in the same places, and reuses its bind groups
   * (./bind-group-cache.ts).
   */
  private order = new WeakMap<GPUBuffer, number>();
  private stats: PoolStats = { liveBytes: 0, peakBytes: 0, pooledBytes: 0, allocations: 0, reuses: 0 };

  constructor(private createBuffer: CreateBuffer, private maxBufferSize: number) {}

  acquire(bytes: number, label: string): GPUBuffer {
    let size = sizeClass(bytes);
    // Past the largest class that fits, the exact size (in 4-byte words) may still fit.
    if (size > this.maxBufferSize) size = Math.ceil(Math.max(16, bytes) / 4) * 4;
    if (size > this.maxBufferSize) {
      throw new RangeError(
        `${label}: a buffer of ${bytes} bytes exceeds this device's maxBufferSize (${this.maxBufferSize}); use a smaller batch or image size`,
      );
    }
    const list = this.free.get(size);
    let buffer = list?.pop();
    if (buffer) {
      this.stats.reuses++;
      this.stats.pooledBytes -= size;
      buffer.label = `difrep ${label}`;
    } else {
      buffer = this.createBuffer({ size, usage: USAGE_STORAGE, label: `difrep ${label}` });
      this.order.set(buffer, this.stats.allocations++);
    }
    this.live.add(buffer);
    this.stats.liveBytes += size;
    if (this.stats.liveBytes > this.stats.peakBytes) this.stats.peakBytes = this.stats.liveBytes;
    return buffer;
  }

  release(buffer: GPUBuffer): void {
    if (!this.live.delete(buffer)) return; // destroyed by destroyAll()
    const size = buffer.size;
    this.stats.liveBytes -= size;
    this.stats.pooledBytes += size;
    let list = this.free.get(size);
    if (!list) this.free.set(size, (list = []));
    // Binary search for its place in descending creation order.
    const rank = this.order.get(buffer)!;
    let lo = 0;
    let hi = list.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.order.get(list[mid])! > rank) lo = mid + 1;
      else hi = mid;
    }
    list.splice(lo, 0, buffer);
  }

  /** The buffer is one of the pool's, handed out and not yet released. */
  isLive(buffer: GPUBuffer): boolean {
    return this.live.has(buffer);
  }

  /**
   * Destroys every pooled (free) buffer. Only once recorded work is submitted (Engine.releasePooled
   * flushes first): a buffer released while unsubmitted work still uses it sits in the free lists,
   * and destroying it would drop that batch.
   */
  trim(): void {
    for (const list of this.free.values()) for (const b of list) b.destroy();
    this.free.clear();
    this.stats.pooledBytes = 0;
  }

  /** Destroys every buffer the pool made, live ones included (the engine is going away). */
  destroyAll(): void {
    this.trim();
    for (const b of this.live) b.destroy();
    this.live.clear();
    this.stats.liveBytes = 0;
  }

  resetPeak(): void {
    this.stats.peakBytes = this.stats.liveBytes;
  }

  getStats(): PoolStats {
    return { ...this.stats };
  }
}
