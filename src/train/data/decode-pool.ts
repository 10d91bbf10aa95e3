// Image decoding off the main thread: a small pool of worker threads, so decoding the next batch
// overlaps the U-Net work on the current one (extractFeatures prefetches one batch ahead).
import { Worker } from 'node:worker_threads';
import type { DecodedBatch, DecodeOptions, ImageResult } from './image-folder.ts';

type Reply = { id: number; images: Float32Array; results: ImageResult[] } | { id: number; error: string };

export class DecodePool {
  private workers: Worker[];
  private next = 0;
  private pending = new Map<number, { resolve: (b: DecodedBatch) => void; reject: (e: Error) => void; worker: Worker }>();
  private ids = 0;
  private closing = false;

  constructor(threads = 2, private options: DecodeOptions = {}) {
    // Built JavaScript (dist/) starts the compiled worker. From source, Node runs TypeScript through
    // tsx, whose loader a worker thread does not inherit; Deno runs the .ts directly.
    const isNode = typeof process !== 'undefined' && !!process.versions?.node && !('Deno' in globalThis);
    const compiled = import.meta.url.endsWith('.js');
    const script = new URL(compiled ? './decode-worker.js' : isNode ? './decode-worker-node.mjs' : './decode-worker.ts', import.meta.url);
    this.workers = Array.from({ length: Math.max(1, threads) }, () => {
      const w = new Worker(script);
      w.on('message', (m: Reply) => {
        const p = this.pending.get(m.id);
        if (!p) return;
        this.pending.delete(m.id);
        if ('error' in m) p.reject(new Error(`image decoder thread: ${m.error}`));
        else p.resolve({ images: m.images, results: m.results });
      });
      w.on('error', (err) => this.failWorker(w, `image decoder thread failed: ${err.message}`));
      w.on('exit', (code) => {
        if (!this.closing) this.failWorker(w, `image decoder thread exited (code ${code}) before finishing its batch`);
      });
      return w;
    });
  }

  private failWorker(w: Worker, message: string): void {
    for (const [id, p] of this.pending) {
      if (p.worker !== w) continue;
      p.reject(new Error(message));
      this.pending.delete(id);
    }
  }

  /**
   * Decodes a batch in a worker thread. Rejects naming every file that could not be decoded: no
   * image silently becomes a slot of zeros. `sha256`: the files' digests from folderFingerprint,
   * checked against the bytes decoded.
   */
  async decode(files: readonly string[], size: number, flips?: readonly boolean[], sha256?: readonly string[]): Promise<DecodedBatch> {
    const id = ++this.ids;
    const w = this.workers[this.next++ % this.workers.length];
    const batch = await new Promise<DecodedBatch>((resolve, reject) => {
      this.pending.set(id, { resolve, reject, worker: w });
      w.postMessage({ id, files: [...files], size, flips: flips && [...flips], maxPixels: this.options.maxPixels, sha256: sha256 && [...sha256] });
    });
    const failed = batch.results.flatMap((r) => (r.ok ? [] : [`${r.file}: ${r.error}`]));
    if (failed.length) throw new Error(`cannot decode ${failed.length} of ${files.length} images: ${failed.join('; ')}`);
    return batch;
  }

  async close(): Promise<void> {
    this.closing = true;
    await Promise.all(this.workers.map((w) => w.terminate()));
  }
}
