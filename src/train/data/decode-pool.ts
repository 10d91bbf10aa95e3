// Image decoding off the main thread: a small pool of worker threads, so decoding the next batch
// overlaps the U-Net work on the current one (extractFeatures prefetches one batch ahead).
import { Worker } from 'node:worker_threads';
import type { DecodedBatch } from './image-folder.ts';

export class DecodePool {
  private workers: Worker[];
  private next = 0;
  private pending = new Map<number, { resolve: (b: DecodedBatch) => void; reject: (e: Error) => void; worker: Worker }>();
  private ids = 0;

  constructor(threads = 2) {
    // Built JavaScript (dist/) starts the compiled worker. From source, Node runs TypeScript through
    // tsx, whose loader a worker thread does not inherit; Deno runs the .ts directly.
    const isNode = typeof process !== 'undefined' && !!process.versions?.node && !('Deno' in globalThis);
    const compiled = import.meta.url.endsWith('.js');
    const script = new URL(compiled ? './decode-worker.js' : isNode ? './decode-worker-node.mjs' : './decode-worker.ts', import.meta.url);
    this.workers = Array.from({ length: Math.max(1, threads) }, () => {
      const w = new Worker(script);
      w.on('message', (m: { id: number; images: Float32Array; failed: string[] }) => {
        this.pending.get(m.id)?.resolve({ images: m.images, failed: m.failed });
        this.pending.delete(m.id);
      });
      w.on('error', (err) => {
        for (const [id, p] of this.pending) {
          if (p.worker !== w) continue;
          p.reject(new Error(`image decoder thread failed: ${err.message}`));
          this.pending.delete(id);
        }
      });
      return w;
    });
  }

  decode(files: readonly string[], size: number, flips?: readonly boolean[]): Promise<DecodedBatch> {
    const id = ++this.ids;
    const w = this.workers[this.next++ % this.workers.length];
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, worker: w });
      w.postMessage({ id, files: [...files], size, flips: flips && [...flips] });
    });
  }

  async close(): Promise<void> {
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
