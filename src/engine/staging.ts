// Reusable mapped staging buffers for uploads and readbacks. A fresh mappable buffer per transfer
// costs an allocation (host-visible memory that Dawn zero-fills) every time: on lavapipe, 64 MiB
// uploads ran at 0.65 GB/s through a new mappedAtCreation buffer and at 3.3 GB/s through one
// reused buffer; readbacks at 0.75 vs 1.22 GB/s (the rest is copying out of the mapping into
// memory the caller keeps). Buffers come in power-of-two sizes from 64 KiB, and the free ones are
// capped at `maxFreeBytes` per direction; a transfer larger than that gets a buffer of its own.
//
// Upload buffers wait mapped for writing. After the submit that copies out of one, `recycle` maps
// it again, which resolves once the GPU has run that copy, and it returns to the free list.
// Readback buffers wait unmapped: the caller maps one after its copy, reads it, and gives it back.

import type { CreateBuffer } from './buffer-pool.ts';

const MIN_BYTES = 64 * 1024;

const sizeClass = (bytes: number) => Math.max(MIN_BYTES, 2 ** Math.ceil(Math.log2(bytes)));

class FreeList {
  private readonly buffers: GPUBuffer[] = [];
  private bytes = 0;

  constructor(private readonly maxBytes: number) {}

  /** The smallest free buffer of at least `size` bytes, removed from the list. */
  take(size: number): GPUBuffer | undefined {
    let best = -1;
    this.buffers.forEach((b, i) => {
      if (b.size >= size && (best < 0 || b.size < this.buffers[best].size)) best = i;
    });
    if (best < 0) return undefined;
    const [b] = this.buffers.splice(best, 1);
    this.bytes -= b.size;
    return b;
  }

  /** Keeps `b` for reuse, or destroys it when the list is full. */
  give(b: GPUBuffer): void {
    if (this.bytes + b.size > this.maxBytes) return void b.destroy();
    this.buffers.push(b);
    this.bytes += b.size;
  }

  destroyAll(): void {
    for (const b of this.buffers.splice(0)) b.destroy();
    this.bytes = 0;
  }
}

export class StagingRing {
  private readonly uploads: FreeList;
  private readonly readbacks: FreeList;
  private closed = false;

  constructor(private readonly createBuffer: CreateBuffer, readonly maxFreeBytes = 128 * 1024 * 1024) {
    this.uploads = new FreeList(maxFreeBytes);
    this.readbacks = new FreeList(maxFreeBytes);
  }

  /** A new buffer's size: its size class, or exactly `bytes` (to 4) when it will not be kept. */
  private sizeFor(bytes: number): number {
    return bytes > this.maxFreeBytes ? Math.ceil(bytes / 4) * 4 : sizeClass(bytes);
  }

  /** A buffer of at least `bytes` bytes, mapped for writing, usable as a copy source. */
  uploadBuffer(bytes: number): GPUBuffer {
    const reused = this.uploads.take(bytes);
    if (reused) return reused;
    return this.createBuffer({ size: this.sizeFor(bytes), usage: GPUBufferUsage.MAP_WRITE | GPUBufferUsage.COPY_SRC, mappedAtCreation: true, label: 'difrep upload' });
  }

  /** Call for each upload buffer once the submit that copies out of it has gone to the queue. */
  recycle(b: GPUBuffer): void {
    if (this.closed || b.size > this.maxFreeBytes) return void b.destroy();
    b.mapAsync(GPUMapMode.WRITE).then(
      () => (this.closed ? b.destroy() : this.uploads.give(b)),
      () => b.destroy(), // the device was lost or the engine disposed meanwhile
    );
  }

  /** An unmapped buffer of at least `bytes` bytes, mappable for reading, usable as a copy target. */
  readbackBuffer(bytes: number): GPUBuffer {
    const reused = this.readbacks.take(bytes);
    if (reused) return reused;
    return this.createBuffer({ size: this.sizeFor(bytes), usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST, label: 'difrep readback' });
  }

  /** Returns a readback buffer, unmapped, after its contents were read. */
  returnReadback(b: GPUBuffer): void {
    if (this.closed || b.size > this.maxFreeBytes || b.mapState !== 'unmapped') return void b.destroy();
    this.readbacks.give(b);
  }

  destroy(): void {
    this.closed = true;
    this.uploads.destroyAll();
    this.readbacks.destroyAll();
  }
}
