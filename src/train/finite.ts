// Every number the training loops keep or report is finite: a NaN or Inf stops the run with an
// error naming where it appeared, never a score.
export class NonFiniteError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'NonFiniteError';
  }
}

/** Index of the first NaN or ±Inf in `values`, or −1. */
export function firstNonFinite(values: ArrayLike<number>): number {
  for (let i = 0; i < values.length; i++) if (!Number.isFinite(values[i])) return i;
  return -1;
}

/** Throws a NonFiniteError naming `what` and the first bad index when `values` holds a NaN or Inf. */
export function assertFinite(values: ArrayLike<number>, what: string): void {
  const i = firstNonFinite(values);
  if (i >= 0) throw new NonFiniteError(`${what} holds ${values[i]} at index ${i}`);
}
