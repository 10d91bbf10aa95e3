// Training steps' losses (and logits, for the training accuracy) kept on the GPU and read back
// together every so many steps: one round trip for the lot instead of one per step, so the CPU
// records the next steps while the GPU still runs the last. A non-finite loss is still reported
// with the batch and step it appeared at.
import type { Engine } from '../engine/engine.ts';
import type { Tensor } from '../engine/tensor.ts';
import { checkLoss } from './checkpoint.ts';
import { countTopK } from './eval/classification.ts';

interface PendingStep {
  loss: Tensor;
  logits?: Tensor;
  labels: number[];
  where: string;
}

export class StepLosses {
  /** Σ loss × batch size over the steps read so far. */
  weightedSum = 0;
  /** Training images whose logits ranked the label first. */
  correct = 0;
  private pending: PendingStep[] = [];

  /** `readEvery`: read back after this many steps (bounds what is held and how late an error shows). */
  constructor(private e: Engine, private readEvery = 64) {}

  /** Takes ownership of `loss` (and `logits`), reading them back with the others later. */
  async add(loss: Tensor, labels: number[], where: string, logits?: Tensor): Promise<void> {
    this.pending.push({ loss, logits, labels, where });
    if (this.pending.length >= this.readEvery) await this.read();
  }

  /** Frees the steps still pending without reading them (a fit that failed in a later step). */
  dispose(): void {
    for (const s of this.pending) {
      s.loss.dispose();
      s.logits?.dispose();
    }
    this.pending = [];
  }

  /** Reads every step still pending; throws at the first non-finite loss, naming its step. */
  async read(): Promise<void> {
    const steps = this.pending;
    this.pending = [];
    try {
      const tensors = steps.flatMap((s) => (s.logits ? [s.loss, s.logits] : [s.loss]));
      const values = await this.e.readTensors(tensors);
      let at = 0;
      for (const s of steps) {
        this.weightedSum += checkLoss(values[at++][0], s.where) * s.labels.length;
        if (s.logits) this.correct += countTopK(values[at++], s.labels).top1;
      }
    } finally {
      for (const s of steps) {
        s.loss.dispose();
        s.logits?.dispose();
      }
    }
  }
}
