// Linear-probe accuracy over a grid of b × t × pool × standardisation (the paper's Figures 3–4;
// the miniature issue's protocol chooses among these on a validation split).
import type { Engine } from '../engine/engine.ts';
import { poolCached } from './cached-features.ts';
import { featureKey } from './feature-key.ts';
import type { FeatureArrays } from './fit.ts';
import { fitLinearProbeStack } from './fit-probe-stack.ts';
import { constantDimensionsWarning, standardizeSplits } from './standardize.ts';

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
  /** StepLR step in epochs and factor (fitHead's defaults when absent). */
  stepSize?: number;
  gamma?: number;
  seed?: number;
  onRow?: (row: SweepRow) => void;
  /** Called once per pool whose standardised features have dimensions constant over the training split. */
  onWarning?: (warning: string) => void;
}

export interface SweepRow {
  t: number;
  b: number;
  pool: number;
  standardize: boolean;
  top1: number;
  top5: number;
}

/**
 * One t × b of both splits, pooled on the CPU to `pool` and standardised with the training split's
 * statistics when asked (`constant`: standardizeSplits' dimensions constant over the training split).
 */
export function probeInputs(train: FeatureArrays, test: FeatureArrays, key: string, pool: number, standardize: boolean): { train: FeatureArrays; test: FeatureArrays; warning?: string; constant: string[] } {
  const one = (d: FeatureArrays): FeatureArrays => {
    const f = d.features.get(key);
    if (!f) throw new Error(`the sweep has no features ${key}`);
    try {
      return { ...d, features: new Map([[key, poolCached(f, d.count, pool)]]) };
    } catch (err) {
      throw err instanceof RangeError ? new RangeError(`sweep, features ${key}, pool ${pool}: ${err.message} (in the --pool list), or extract these features with another --pool (0 keeps the full maps)`) : err;
    }
  };
  return standardize ? standardizeSplits(one(train), one(test)) : { train: one(train), test: one(test), constant: [] };
}

/**
 * Trains and scores one linear probe per grid point (rows in the order pool, standardisation, b,
 * t): the b × t probes of each pool and standardisation train side by side as one stack, each
 * exactly as fitHead would train it alone.
 */
export async function sweepLinearProbes(e: Engine, train: FeatureArrays, test: FeatureArrays, o: SweepOptions): Promise<SweepRow[]> {
  // Every pool of the grid tried on one image of each split before any probe trains: a pool the
  // cached maps cannot give failed after the smaller pools had trained, and their rows were lost.
  const first = (d: FeatureArrays): FeatureArrays => ({
    ...d, count: 1, labels: [d.labels[0]],
    features: new Map([...d.features].map(([k, f]) => [k, { ...f, data: f.data.subarray(0, f.data.length / d.count) }])),
  });
  for (const pool of o.pools) for (const b of o.blocks) for (const t of o.timesteps) probeInputs(first(train), first(test), featureKey(t, b), pool, false);
  const rows: SweepRow[] = [];
  for (const pool of o.pools) {
    for (const standardize of o.standardize) {
      const points = o.blocks.flatMap((b) => o.timesteps.map((t) => ({ t, b })));
      const inputs = points.map(({ t, b }) => probeInputs(train, test, featureKey(t, b), pool, standardize));
      const warning = constantDimensionsWarning(train.count, inputs.flatMap((i) => i.constant));
      if (warning) o.onWarning?.(`sweep, pool ${pool}: ${warning}`);
      const scores = await fitLinearProbeStack(e, inputs.map((i) => i.train), inputs.map((i) => i.test), {
        classes: o.classes, epochs: o.epochs, batchSize: o.batchSize, lr: o.lr, stepSize: o.stepSize, gamma: o.gamma, seed: o.seed, what: `sweep, pool ${pool}, ${standardize ? 'standardised' : 'raw scale'}`,
        names: points.map(({ t, b }) => `features ${featureKey(t, b)}`),
      });
      points.forEach(({ t, b }, i) => {
        const row = { t, b, pool, standardize, top1: scores[i].top1, top5: scores[i].top5 };
        rows.push(row);
        o.onRow?.(row);
      });
    }
  }
  return rows;
}

/**
 * The row of highest top-1 and how many others tie with it. Ties go to the lowest t, then block,
 * pool, raw scale (the demo's rule), so the pick does not depend on the order the grid was given in.
 */
export function bestSweepRow(rows: readonly SweepRow[]): { best: SweepRow; tied: number } {
  if (!rows.length) throw new RangeError('bestSweepRow: no rows');
  const ranked = [...rows].sort((a, b) => b.top1 - a.top1 || a.t - b.t || a.b - b.b || a.pool - b.pool || Number(a.standardize) - Number(b.standardize));
  return { best: ranked[0], tied: ranked.filter((r) => r.top1 === ranked[0].top1).length - 1 };
}
