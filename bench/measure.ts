// Timing protocol: one warm-up call (timed apart: it includes pipeline compilation), then
// repetitions until at least `minSeconds` have passed (at least `minReps`, at most `maxReps`).
// Each repetition records the work, submits it and waits for the queue to drain
// (onSubmittedWorkDone), so a time covers the GPU work of exactly one call.
import type { Engine } from '../src/engine/engine.ts';

export interface Measurement {
  /** First call, compilation included, in ms. */
  firstMs: number;
  medianMs: number;
  minMs: number;
  maxMs: number;
  reps: number;
  gflops?: number;
  gbps?: number;
}

export interface MeasureOptions {
  flops?: number;
  bytes?: number;
  minReps?: number;
  maxReps?: number;
  minSeconds?: number;
}

export async function measure(e: Engine, run: () => void, opts: MeasureOptions = {}): Promise<Measurement> {
  const once = async () => {
    const t0 = performance.now();
    e.tidy(run);
    await e.sync();
    return performance.now() - t0;
  };
  const firstMs = await once();
  const times: number[] = [];
  const minReps = opts.minReps ?? 3;
  const maxReps = opts.maxReps ?? 10;
  const budget = (opts.minSeconds ?? 1) * 1000;
  let spent = 0;
  while (times.length < maxReps && (times.length < minReps || spent < budget)) {
    const ms = await once();
    times.push(ms);
    spent += ms;
  }
  times.sort((a, b) => a - b);
  const medianMs = median(times);
  return {
    firstMs,
    medianMs,
    minMs: times[0],
    maxMs: times[times.length - 1],
    reps: times.length,
    gflops: opts.flops ? opts.flops / (medianMs * 1e6) : undefined,
    gbps: opts.bytes ? opts.bytes / (medianMs * 1e6) : undefined,
  };
}

/** The median of ascending `sorted` (the mean of the middle two for an even count), as Python's statistics.median. */
export function median(sorted: readonly number[]): number {
  const m = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[m] : (sorted[m - 1] + sorted[m]) / 2;
}
