// GPU time per kernel, from timestamp queries: while profiling, every dispatch runs in a compute
// pass of its own whose begin/end timestamps land in a query set; at each submit the set is
// resolved and read back, and the nanoseconds are summed per kernel key. Costs one pass per
// dispatch, so it is for finding where time goes, not for the bench's numbers.
import type { CreateBuffer } from './buffer-pool.ts';

export interface KernelTime {
  kernel: string;
  /** The engine's profile tag when the kernel ran (e.g. the U-Net block), or ''. */
  tag: string;
  calls: number;
  ms: number;
}

/** The most queries a GPUQuerySet may hold (WebGPU's limit). */
const MAX_QUERIES = 4096;

export class KernelProfiler {
  private readonly querySet: GPUQuerySet;
  private labels: string[] = [];
  /** Set by Engine.profileTag; recorded with every dispatch. */
  tag = '';
  private readonly totals = new Map<string, { calls: number; ns: number }>();
  private pending: Promise<void>[] = [];
  /** Why a batch's timings could not be read back, if one's could not. */
  private lost?: string;
  /** Dispatches timed per batch. */
  readonly capacity: number;

  /**
   * `createBuffer` makes its resolve and readback buffers (the engine's, inside its error scopes).
   * Times at most `dispatches` per batch, and never more than one query set holds (4096 queries, two
   * per dispatch): the engine submits a batch when `full`.
   */
  constructor(device: GPUDevice, dispatches: number, private readonly createBuffer: CreateBuffer) {
    this.capacity = Math.min(dispatches, MAX_QUERIES / 2);
    this.querySet = device.createQuerySet({ type: 'timestamp', count: this.capacity * 2, label: 'difrep profiler' });
  }

  /** Every query of this batch is taken: the next dispatch would go untimed. */
  get full(): boolean {
    return this.labels.length >= this.capacity;
  }

  /** Pass descriptor that records the next dispatch's begin and end times, or null when full. */
  nextPass(kernel: string): GPUComputePassDescriptor | null {
    if (this.full) return null;
    const i = this.labels.length;
    this.labels.push(`${this.tag}\u0000${kernel}`);
    return { label: kernel, timestampWrites: { querySet: this.querySet, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 } };
  }

  /** Records the resolve of this batch's queries into `encoder`; call `collect` after the submit. */
  resolve(encoder: GPUCommandEncoder): (() => void) | null {
    const n = this.labels.length;
    if (n === 0) return null;
    const labels = this.labels;
    this.labels = [];
    const bytes = n * 16;
    const resolved = this.createBuffer({ size: bytes, usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC, label: 'difrep profiler resolve' });
    const readback = this.createBuffer({ size: bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST, label: 'difrep profiler readback' });
    encoder.resolveQuerySet(this.querySet, 0, 2 * n, resolved, 0);
    encoder.copyBufferToBuffer(resolved, 0, readback, 0, bytes);
    return () => {
      this.pending.push(readback.mapAsync(GPUMapMode.READ).then(() => {
        const t = new BigUint64Array(readback.getMappedRange());
        labels.forEach((k, i) => {
          const total = this.totals.get(k) ?? { calls: 0, ns: 0 };
          total.calls++;
          total.ns += Number(t[2 * i + 1] - t[2 * i]);
          this.totals.set(k, total);
        });
        readback.destroy();
        resolved.destroy();
      }, (err: Error) => {
        // Not left to reject unawaited (an unhandled rejection ends a Node app): report() says so.
        this.lost ??= `${labels.length} dispatches' timings were lost (${err.message})`;
        readback.destroy();
        resolved.destroy();
      }));
    };
  }

  /** Totals per kernel so far, slowest first. */
  async report(): Promise<KernelTime[]> {
    await Promise.all(this.pending);
    this.pending = [];
    if (this.lost) throw new Error(`profiler: ${this.lost}; the totals would undercount`);
    return [...this.totals].map(([key, v]) => {
      const [tag, kernel] = key.split('\u0000');
      return { kernel, tag, calls: v.calls, ms: v.ns / 1e6 };
    }).sort((a, b) => b.ms - a.ms);
  }

  destroy(): void {
    this.querySet.destroy();
  }
}
