// P independent GD linear probes side by side (the grid points of a validation sweep): probe p
// reads its own flattened feature of D_p values through its own Linear(D_p → classes). The weights
// are one zero-padded batch [P, classes, D] (D = max D_p) and the inputs [P, N, D], so all P take
// one batched matmul per step instead of P small ones. A padding column only ever meets zero
// inputs: its gradient is 0 and (Adam being elementwise) it never moves, so every probe trains
// exactly as a LinearProbe would alone (same seed, same initial values, same updates).
import type { Engine } from '../../engine/engine.ts';
import { add } from '../../engine/ops/elementwise.ts';
import { matmul } from '../../engine/ops/matmul.ts';
import type { Tensor } from '../../engine/tensor.ts';
import { initialValues } from '../state-dict.ts';
import { LinearProbe } from './linear-probe.ts';

export class LinearProbeStack {
  /** D: the padded input width. */
  readonly width: number;
  private staging = new Map<number, Float32Array>();

  private constructor(readonly engine: Engine, readonly dims: readonly number[], readonly classes: number, readonly params: Map<string, Tensor>) {
    this.width = Math.max(...dims);
  }

  /** Probe p starts where LinearProbe.create({ channels: dims[p], pool: 1 }, seed) does. */
  static create(e: Engine, dims: readonly number[], classes: number, seed = 0): LinearProbeStack {
    if (!dims.length || dims.some((d) => !Number.isInteger(d) || d < 1)) throw new RangeError(`LinearProbeStack: input widths [${dims}] must be positive integers, at least one`);
    const P = dims.length;
    const D = Math.max(...dims);
    const weight = new Float32Array(P * classes * D);
    const bias = new Float32Array(P * classes);
    dims.forEach((d, p) => {
      const v = initialValues(LinearProbe.specs({ channels: d, classes, pool: 1 }), seed);
      const w = v.get('weight')!; // [classes, d]
      for (let k = 0; k < classes; k++) weight.set(w.subarray(k * d, (k + 1) * d), (p * classes + k) * D);
      bias.set(v.get('bias')!, p * classes);
    });
    const params = new Map([
      ['weight', e.keep(e.tensor(weight, [P, classes, D], 'weight'))],
      ['bias', e.keep(e.tensor(bias, [P, 1, classes], 'bias'))],
    ]);
    return new LinearProbeStack(e, dims, classes, params);
  }

  /** Probe p's inputs `rows` of `features[p]` ([count, dims[p]] row-major), zero-padded into [P, rows, D]. */
  pack(features: readonly Float32Array[], rows: readonly number[]): Tensor {
    const D = this.width;
    const P = this.dims.length;
    // One staging array per batch size, reused (the upload copies it): its padding stays zero.
    let out = this.staging.get(rows.length);
    if (!out) this.staging.set(rows.length, (out = new Float32Array(P * rows.length * D)));
    this.dims.forEach((d, p) => {
      const f = features[p];
      const count = f.length / d;
      if (!Number.isInteger(count)) throw new RangeError(`probe stack: probe ${p}'s features hold ${f.length} values, not rows of ${d}`);
      rows.forEach((r, n) => {
        // Past the end, subarray is empty and the slot would keep the previous batch's row.
        if (!(Number.isInteger(r) && r >= 0 && r < count)) throw new RangeError(`probe stack: row ${r} is not one of probe ${p}'s ${count} rows`);
        out!.set(f.subarray(r * d, (r + 1) * d), (p * rows.length + n) * D);
      });
    });
    return this.engine.tensor(out, [P, rows.length, D], 'probe inputs');
  }

  /** x [P, N, D] → logits [P, N, classes]. */
  forward(x: Tensor): Tensor {
    return this.engine.tidy(() => add(matmul(x, this.params.get('weight')!, { transB: true }), this.params.get('bias')!));
  }

}
