// A linear-probe sweep as heatmaps (blocks × timesteps), one per pool and standardisation that it
// covers: `sweep-pool<P>[-standardized].svg/.png` in a directory (difrep sweep, npm run demo).
import { readdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { heatmapSvg } from './charts.ts';
import { writeChart } from './write-chart.ts';

export interface SweepCell {
  t: number;
  b: number;
  pool: number;
  standardize: boolean;
  value: number;
}

export interface SweepLabels {
  title: (pool: number, standardized: boolean) => string;
  row: (b: number) => string;
  column: (t: number) => string;
}

/** An earlier run's chart in the folder (another pool or standardisation) that this run does not write. */
const SWEEP_CHART = /^sweep-pool\d+(-standardized)?\.(png|svg)$/;

/**
 * Writes one heatmap per (pool, standardisation) of `cells` (every b × t of it present), removes
 * the sweep charts an earlier run left in `outDir` for pools or standardisation this run does not
 * cover (beside this run's results they read as its own), and returns the PNG paths.
 */
export async function writeSweepHeatmaps(outDir: string, cells: SweepCell[], labels: SweepLabels): Promise<string[]> {
  const uniq = (xs: number[]) => [...new Set(xs)].sort((a, b) => a - b);
  const blocks = uniq(cells.map((c) => c.b));
  const timesteps = uniq(cells.map((c) => c.t));
  const written: string[] = [];
  for (const pool of uniq(cells.map((c) => c.pool))) {
    for (const std of [false, true]) {
      const at = cells.filter((c) => c.pool === pool && c.standardize === std);
      if (!at.length) continue;
      const value = (b: number, t: number) => {
        const c = at.find((x) => x.b === b && x.t === t);
        if (!c) throw new Error(`sweep heatmap: no result for b ${b}, t ${t}, pool ${pool}${std ? ', standardised' : ''}`);
        return c.value;
      };
      const grid = blocks.map((b) => timesteps.map((t) => value(b, t)));
      const svg = heatmapSvg(grid, blocks.map(labels.row), timesteps.map(labels.column), labels.title(pool, std));
      written.push((await writeChart(join(outDir, `sweep-pool${pool}${std ? '-standardized' : ''}.png`), svg)).png);
    }
  }
  const kept = new Set(written.flatMap((png) => [png, png.replace(/\.png$/, '.svg')]));
  for (const name of await readdir(outDir)) {
    if (SWEEP_CHART.test(name) && !kept.has(join(outDir, name))) await unlink(join(outDir, name));
  }
  return written;
}
