// Every number the training loops keep or report is finite: a NaN or Inf stops the run with an
// error naming where it appeared, never a score.
import { firstNonFinite } from '../model/checkpoint/tensor-source.ts';

export class NonFiniteError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'NonFiniteError';
  }
}

/** Throws a NonFiniteError naming `what` and the first bad index when `values` holds a NaN or Inf. */
export function assertFinite(values: ArrayLike<number>, what: string): void {
  const i = firstNonFinite(values);
  if (i >= 0) throw new NonFiniteError(`${what} holds ${values[i]} at index ${i}`);
}
