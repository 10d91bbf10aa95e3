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

/**
 * Throws a NonFiniteError at the first NaN or Inf of `logits` ([rows, classes], row-major), named by
 * its row and class — `${rowName(row)} hold v (class c)${note}` — not by a flat index, which names
 * no image.
 */
export function assertFiniteLogits(logits: ArrayLike<number>, classes: number, rowName: (row: number) => string, note = ''): void {
  const i = firstNonFinite(logits);
  if (i >= 0) throw new NonFiniteError(`${rowName(Math.floor(i / classes))} hold ${logits[i]} (class ${i % classes})${note}`);
}

/**
 * Throws a NonFiniteError naming the path (results.rows[3].top1) of the first NaN or Inf in a JSON
 * value: JSON.stringify writes them as null without a word.
 */
export function assertFiniteJson(value: unknown, path: string): void {
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) throw new NonFiniteError(`${path} is ${value}`);
  } else if (Array.isArray(value)) {
    value.forEach((v, i) => assertFiniteJson(v, `${path}[${i}]`));
  } else if (value && typeof value === 'object') {
    for (const [k, v] of Object.entries(value)) assertFiniteJson(v, `${path}.${k}`);
  }
}
