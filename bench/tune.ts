// `npm run bench -- --tune`: searches the register-tiling parameters of the matmul and conv2d
// kernels on this adapter and stores the winners in a JSON cache keyed by adapter
// (~/.cache/difrep/tuning.json, or $DIFREP_TUNING: src/cli/tuning-cache.ts), which every CLI command
// and the bench apply to their engines.
import { DEFAULT_MATMUL_TILING, type MatmulTiling } from '../kernels/matmul.wgsl.ts';
import { storeTuning } from '../src/cli/tuning-cache.ts';
import type { Engine } from '../src/engine/engine.ts';
import * as ops from '../src/engine/ops/index.ts';
import { gaussianNoise } from '../src/model/diffusion.ts';
import { measure } from './measure.ts';

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
  await storeTuning(adapter, winners as unknown as Record<string, Record<string, number>>);
  return winners;
}
