// One optimisation step entirely on the GPU: forward, loss, backward, optimizer update. Nothing is
// read back to the CPU unless the loss is asked for.
import type { Engine } from '../engine/engine.ts';
import { add } from '../engine/ops/elementwise.ts';
import type { Tensor } from '../engine/tensor.ts';
import type { Optimizer } from './optimizer.ts';

/**
 * A step's loss: one function that builds the forward graph and returns a scalar, or the batch in
 * parts (gradient accumulation), each part's loss weighted by the caller so that their sum is the
 * batch's loss (a mean over n images: part i's mean × nᵢ/n).
 */
export type StepLoss = (() => Tensor) | readonly (() => Tensor)[];

/** The optimizers whose step (trainStepKeepingLoss, to its update) is running. */
const stepping = new WeakSet<Optimizer>();

/** [start, end) of each part of `size` (the last one shorter) over `count` items. */
export function partRanges(count: number, size: number): [number, number][] {
  const ranges: [number, number][] = [];
  for (let s = 0; s < count; s += size) ranges.push([s, Math.min(count, s + size)]);
  return ranges;
}

/**
 * Runs the loss (each part in turn: forward, then backward, its gradients adding up in the
 * parameters' .grad, the engine settling between parts, so a batch whose graph records more GPU
 * commands than may wait at once still trains), steps, then awaits engine.settle(), so a loop of
 * steps that reads no loss never queues unbounded GPU work. Returns the loss tensor (the parts'
 * sum), still on the GPU: the caller reads (StepLosses) and disposes it. `beforeUpdate` runs after
 * the parts, before the update: more backward passes into the same gradients (DifFeed's BatchNorm
 * statistics, whose gradient is known only once every part has run).
 */
export async function trainStepKeepingLoss(e: Engine, optimizer: Optimizer, loss: StepLoss, beforeUpdate?: () => Promise<void>): Promise<Tensor> {
  const parts = typeof loss === 'function' ? [loss] : loss;
  if (parts.length === 0) throw new RangeError('trainStep: a step needs at least one loss part');
  // Two steps of one optimizer at once (Promise.all over batches, a button clicked twice) added
  // both gradients into the same .grad: the first update took their sum and the second none.
  if (stepping.has(optimizer)) throw new Error('trainStep: a step of this optimizer is still running; await it before the next');
  stepping.add(optimizer);
  let total: Tensor | undefined;
  try {
    for (const part of parts) {
      const l = e.tidy(part);
      try {
        e.tape.backward(l);
      } catch (err) {
        l.dispose();
        throw err;
      }
      if (!total) total = l;
      else {
        const sum = e.noGrad(() => add(total!, l));
        total.dispose();
        l.dispose();
        total = sum;
      }
      // Each part, and the update after the last, starts with at most maxCommandsInFlight / 8 waiting.
      await e.settle();
    }
    await beforeUpdate?.();
    optimizer.step();
  } catch (err) {
    total?.dispose();
    e.tape.clear(); // what a part recorded before it threw
    optimizer.zeroGrad(); // the parts that ran leave no gradient for the next step
    throw err;
  } finally {
    stepping.delete(optimizer);
  }
  optimizer.zeroGrad();
  await e.settle();
  return total!;
}

/** trainStepKeepingLoss, reading the loss back (a round trip) only when asked. */
export async function trainStep(e: Engine, optimizer: Optimizer, loss: StepLoss, readLoss = false): Promise<number | undefined> {
  const l = await trainStepKeepingLoss(e, optimizer, loss);
  const value = readLoss ? (await l.read())[0] : undefined;
  l.dispose();
  return value;
}
