// `npm run bench -- --tune`: searches the register-tiling parameters of the matmul and conv2d
// kernels on this adapter and stores the winners in a JSON cache keyed by adapter
// (~/.cache/difrep/tuning.json, or $DIFREP_TUNING), which the CLI and bench pass to createEngine.
import { mkdir, readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { DEFAULT_MATMUL_TILING, type MatmulTiling } from '../kernels/matmul.wgsl.ts';
import type { Engine } from '../src/engine/engine.ts';
import * as ops from '../src/engine/ops/index.ts';
import { gaussianNoise } from '../src/model/diffusion.ts';
import { writeFileAtomic } from '../src/model/checkpoint/atomic-write.ts';
import { measure } from './measure.ts';

export const tuningPath = () => process.env.DIFREP_TUNING ?? join(homedir(), '.cache', 'difrep', 'tuning.json');

async function readCache(): Promise<Record<string, Record<string, Record<string, number>>>> {
  try {
    return JSON.parse(await readFile(tuningPath(), 'utf8'));
  } catch {
    return {};
  }
}

/** The stored tuning for the adapter this process would use (empty when none). */
export async function loadTuningCache(adapter?: string): Promise<Record<string, Record<string, number>>> {
  const cache = await readCache();
  if (adapter) return cache[adapter] ?? {};
  const keys = Object.keys(cache);
  return keys.length === 1 ? cache[keys[0]] : {};
}

function candidates(): MatmulTiling[] {
  const out: MatmulTiling[] = [];
  for (const [wgX, wgY] of [[8, 8], [16, 16], [16, 8]]) {
    for (const [tm, tn] of [[4, 4], [2, 4], [4, 8], [8, 4], [2, 2]]) {
      for (const tk of [8, 16, 32]) {
        const bytes = 4 * tk * (wgY * tm + wgX * tn);
        if (bytes <= 16384 && wgX * wgY <= 256) out.push({ wgX, wgY, tm, tn, tk });
      }
    }
  }
  return out;
}

export async function tune(e: Engine, adapter: string, log: (line: string) => void): Promise<Record<string, MatmulTiling>> {
  const a = e.tensor(gaussianNoise(1024 * 1024, 1), [1024, 1024]);
  const b = e.tensor(gaussianNoise(1024 * 1024, 2), [1024, 1024]);
  const x = e.tensor(gaussianNoise(512 * 32 * 32, 3), [1, 512, 32, 32]);
  const w = e.tensor(gaussianNoise(512 * 512 * 9, 4), [512, 512, 3, 3]);
  const families: [string, () => void, number][] = [
    ['matmul', () => void ops.matmul(a, b), 2 * 1024 ** 3],
    ['conv2d', () => void ops.conv2d(x, w), 2 * 512 * 512 * 9 * 1024],
  ];
  const winners: Record<string, MatmulTiling> = {};
  for (const [family, run, flops] of families) {
    let best = { tiling: DEFAULT_MATMUL_TILING, gflops: 0 };
    for (const c of candidates()) {
      e.tuning[family] = { ...c };
      const m = await measure(e, run, { flops, minReps: 2, maxReps: 3, minSeconds: 0.3 });
      log(`  ${family} ${JSON.stringify(c)}: ${m.gflops!.toFixed(2)} GFLOP/s`);
      if (m.gflops! > best.gflops) best = { tiling: c, gflops: m.gflops! };
    }
    winners[family] = best.tiling;
    e.tuning[family] = { ...best.tiling };
    log(`${family}: best ${JSON.stringify(best.tiling)} at ${best.gflops.toFixed(2)} GFLOP/s`);
  }
  for (const t of [a, b, x, w]) t.dispose();
  const cache = await readCache();
  cache[adapter] = winners as unknown as Record<string, Record<string, number>>;
  await mkdir(dirname(tuningPath()), { recursive: true });
  await writeFileAtomic(tuningPath(), JSON.stringify(cache, null, 2));
  return winners;
}
