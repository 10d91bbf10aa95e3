// Test helpers: a training state's tensors, and two runs of the same fit compared (one on the
// whole batch, one in parts, which must give the same step to rounding).
import type { Test } from 'tap';
import { openSafetensors } from '../../src/model/checkpoint/safetensors.ts';

/** Every tensor of the safetensors file at `path`. */
export async function readTensors(path: string): Promise<Map<string, Float32Array>> {
  const src = await openSafetensors(path);
  try {
    return new Map(await Promise.all(src.keys().map(async (k) => [k, await src.read(k)] as [string, Float32Array])));
  } finally {
    await src.close();
  }
}

export interface FitRun {
  r: { losses: number[]; testHits: Uint8Array };
  /** The saved training state: weights, statistics, optimizer moments. */
  state: Map<string, Float32Array>;
}

/**
 * The run in parts gives the whole batch's run: every epoch's loss to 1e-5, the same test images
 * right, every saved tensor to `tolerance` (relative, over a floor of 1e-3).
 */
export function checkSameRun(t: Test, whole: FitRun, parts: FitRun, tolerance = 3e-4): void {
  for (const [i, l] of whole.r.losses.entries()) t.ok(Math.abs(parts.r.losses[i] - l) <= 1e-5 * l, `epoch ${i + 1}'s loss: ${parts.r.losses[i]} in parts, ${l} whole`);
  t.same(parts.r.testHits, whole.r.testHits, 'the same test images right');
  let worst = { d: 0, key: '' };
  for (const [k, w] of whole.state) {
    const v = parts.state.get(k);
    t.equal(v?.length, w.length, `${k} saved`);
    w.forEach((x, i) => {
      const d = Math.abs(v![i] - x) / (1e-3 + Math.abs(x));
      if (d > worst.d) worst = { d, key: `${k}[${i}]: ${v![i]} in parts, ${x} whole` };
    });
  }
  t.ok(worst.d < tolerance, `saved state: largest relative difference ${worst.d.toExponential(2)} (${worst.key})`);
}

/**
 * Labels that pass a fit's check up front and then turn bad: image `at`'s label reads right the
 * first time and `bad` after, so crossEntropy throws inside the step that draws it (a failure in
 * the middle of a step, whole or in parts, with no other way in from outside).
 */
export function labelTurningBad(labels: ArrayLike<number>, at: number, bad: number): ArrayLike<number> {
  const values = Array.from(labels);
  let reads = 0;
  return new Proxy(values, {
    get(target, key, receiver) {
      if (key === String(at) && reads++ > 0) return bad;
      return Reflect.get(target, key, receiver);
    },
  });
}

/**
 * Fit options that save after every batch and stop the run (an Error 'stopped') when batch `batch`
 * (1-based) of epoch `epoch` (0-based) is done: the last save is after the batch before it.
 */
export function stopAfterBatch(epoch: number, batch: number): { checkpointEverySeconds: number; onEpoch: () => void; onBatch: (done: number) => void } {
  let epochsDone = 0;
  return {
    checkpointEverySeconds: 0,
    onEpoch: () => void epochsDone++,
    onBatch: (done) => {
      if (epochsDone === epoch && done === batch) throw new Error('stopped');
    },
  };
}

/** The training states at `wholePath` and `resumedPath` hold the same tensors, bit for bit. */
export async function checkSameState(t: Test, wholePath: string, resumedPath: string): Promise<void> {
  const [a, b] = [await readTensors(wholePath), await readTensors(resumedPath)];
  t.same([...b.keys()].sort(), [...a.keys()].sort());
  let differing = 0;
  for (const [k, v] of a) differing += v.some((x, i) => x !== b.get(k)![i]) ? 1 : 0;
  t.equal(differing, 0, `every one of ${a.size} tensors bit-identical`);
}
