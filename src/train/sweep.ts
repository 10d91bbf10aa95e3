// Linear-probe accuracy over a grid of b × t × pool × standardisation (the paper's Figures 3–4;
// the miniature issue's protocol chooses among these on a validation split).
import type { Engine } from '../engine/engine.ts';
import { poolCached } from './cached-features.ts';
import { featureKey } from './feature-key.ts';
import { type FeatureArrays, fitHead } from './fit.ts';
import { standardizeSplits } from './standardize.ts';

export interface SweepOptions {
  timesteps: number[];
  blocks: number[];
  pools: number[];
  /** Which of standardisation off (false) and on (true) to try. */
  standardize: boolean[];
  classes: number;
  epochs: number;
  batchSize: number;
  lr: number;
  /** StepLR step in epochs (fitHead's default when absent). */
  stepSize?: number;
  seed?: number;
  onRow?: (row: SweepRow) => void;
}

export interface SweepRow {
  t: number;
  b: number;
  pool: number;
  standardize: boolean;
  top1: number;
  top5: number;
}

/** One t × b of both splits, pooled on the CPU to `pool` and standardised with the training split's statistics when asked. */
export function probeInputs(train: FeatureArrays, test: FeatureArrays, key: string, pool: number, standardize: boolean): { train: FeatureArrays; test: FeatureArrays } {
  const one = (d: FeatureArrays): FeatureArrays => {
    const f = d.features.get(key);
    if (!f) throw new Error(`the sweep has no features ${key}`);
    return { ...d, features: new Map([[key, poolCached(f.data, d.count, f.shape, pool)]]) };
  };
  return standardize ? standardizeSplits(one(train), one(test)) : { train: one(train), test: one(test) };
}

/** Trains and scores one linear probe per grid point, in the order pool, standardisation, b, t. */
export async function sweepLinearProbes(e: Engine, train: FeatureArrays, test: FeatureArrays, o: SweepOptions): Promise<SweepRow[]> {
  const rows: SweepRow[] = [];
  for (const pool of o.pools) {
    for (const standardize of o.standardize) {
      for (const b of o.blocks) {
        for (const t of o.timesteps) {
          const split = probeInputs(train, test, featureKey(t, b), pool, standardize);
          const r = await fitHead(e, split.train, split.test, { head: 'linear', classes: o.classes, timesteps: [t], blocks: [b], pool, epochs: o.epochs, batchSize: o.batchSize, lr: o.lr, stepSize: o.stepSize, seed: o.seed });
          const row = { t, b, pool, standardize, top1: r.top1, top5: r.top5 };
          rows.push(row);
          o.onRow?.(row);
        }
      }
    }
  }
  return rows;
}
