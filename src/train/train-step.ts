// One optimisation step entirely on the GPU: forward, loss, backward, optimizer update. Nothing is
// read back to the CPU unless the loss is asked for.
import type { Engine } from '../engine/engine.ts';
import type { Tensor } from '../engine/tensor.ts';
import type { Optimizer } from './optimizer.ts';

/**
 * Runs `loss()` (which builds the forward graph and returns a scalar), backprops and steps, then
 * awaits engine.settle(), so a loop of steps that reads no loss never queues unbounded GPU work.
 * Returns the loss tensor, still on the GPU: the caller reads (StepLosses) and disposes it.
 */
export async function trainStepKeepingLoss(e: Engine, optimizer: Optimizer, loss: () => Tensor): Promise<Tensor> {
  const l = e.tidy(loss);
  e.tape.backward(l);
  optimizer.step();
  optimizer.zeroGrad();
  await e.settle();
  return l;
}

/** trainStepKeepingLoss, reading the loss back (a round trip) only when asked. */
export async function trainStep(e: Engine, optimizer: Optimizer, loss: () => Tensor, readLoss = false): Promise<number | undefined> {
  const l = await trainStepKeepingLoss(e, optimizer, loss);
  const value = readLoss ? (await l.read())[0] : undefined;
  l.dispose();
  return value;
}
