// The paper's block choices (defined for the 37-block 256×256 model) mapped by role onto any depth
// (SPEC §2 "Any depth"): with middle block M and decoder level j (0 = deepest) holding blocks
// M + (r+1)·j + 1 … M + (r+1)·(j+1) for r res blocks per level.
import type { UNetPlan } from './unet-config.ts';

export interface PaperBlocks {
  /** The paper's b = 24: 2nd block of decoder level 1. */
  feature: number;
  /** DifFeed 'bottleneck' {21,24,27,30,33,36}: the 2nd block of every decoder level. */
  bottleneck: number[];
  /** DifFeed 'windowed' {20..24}: the first five decoder blocks. */
  windowed: number[];
  /** DifFeed 'all' {20..37}: every decoder block. */
  all: number[];
  /**
   * DifFormer B = {19, 24, 30}: M, the 2nd block of decoder levels 1 and 3 (M+5 and M+11 with two res
   * blocks per level; a level past the last becomes the last level).
   */
  difformer: number[];
  /** True unless this model has the paper's layout (6 levels of 2 res blocks: 37 blocks), where the numbers above are the paper's own. */
  mapped: boolean;
}

export function paperBlocks(plan: UNetPlan): PaperBlocks {
  const M = plan.numInputBlocks + 1;
  const N = plan.blocks.length;
  const per = plan.flags.num_res_blocks + 1;
  const levels = plan.channelMult.length;
  const second = (j: number) => M + per * j + 2;
  const all = Array.from({ length: N - M }, (_, i) => M + 1 + i);
  return {
    feature: second(Math.min(1, levels - 1)),
    bottleneck: Array.from({ length: levels }, (_, j) => second(j)),
    windowed: all.slice(0, 5),
    all,
    difformer: [...new Set([M, second(Math.min(1, levels - 1)), second(Math.min(3, levels - 1))])],
    mapped: levels !== 6 || per !== 3,
  };
}

/** One line that says how the paper's numbers map onto this model (printed whenever a default is mapped). */
export function describeMapping(plan: UNetPlan): string {
  const p = paperBlocks(plan);
  return `block mapping for this ${plan.blocks.length}-block U-Net: b24 ↦ ${p.feature}, bottleneck {21,24,27,30,33,36} ↦ {${p.bottleneck}}, ` +
    `windowed {20..24} ↦ {${p.windowed}}, DifFormer {19,24,30} ↦ {${p.difformer}}`;
}
