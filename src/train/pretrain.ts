// Unconditional diffusion pretraining with the simple loss of the paper's Eq. 4:
//   L = E_{x0, t, ε} ‖ε − ε_θ(sqrt(ᾱ_t)·x0 + sqrt(1−ᾱ_t)·ε, t)‖²,  t uniform over the T steps,
// plus L_vb for a learn_sigma model, as guided-diffusion trains it (./diffusion-loss.ts),
// Adam over every U-Net weight, an exponential moving average of the weights (the EMA model is the
// one to sample from and to extract features with), and a training state saved every
// `checkpointEverySeconds` so any run can be stopped and resumed exactly.
import type { Engine } from '../engine/engine.ts';
import { hashSeeds, mulberry32 } from '../engine/random.ts';
import { EMA_WORKGROUP, emaKernel } from '../../kernels/ema.wgsl.ts';
import { blockGrid, elementLoads } from '../../kernels/flat-index.ts';
import { scale } from '../engine/ops/elementwise.ts';
import type { Tensor } from '../engine/tensor.ts';
import { gaussianNoise, linearSchedule, qSample } from '../model/diffusion.ts';
import type { UNet } from '../model/unet.ts';
import { imagesPerChunk } from '../model/unet-bindings.ts';
import { checkLoss, saveTrainingState, savedStateSettings, startOrResume } from './checkpoint.ts';
import { diffusionLoss } from './diffusion-loss.ts';
import { epochBatches } from './epoch-batches.ts';
import type { ImageSource } from './extract.ts';
import { assertFinite } from './finite.ts';
import { coinFlips, mirrorImages } from './flips.ts';
import { Adam } from './optimizer.ts';
import { partRanges, trainStep } from './train-step.ts';

export interface PretrainOptions {
  steps: number;
  batchSize?: number;
  lr?: number;
  emaDecay?: number;
  seed?: number;
  checkpoint?: string;
  checkpointEverySeconds?: number;
  resume?: boolean;
  /** With resume: the line saying which state continues (or that none is saved yet), once its checks pass. */
  onResume?: (line: string) => void;
  /** Mirror each drawn image left–right with probability 1/2, as guided-diffusion's random_flip (default true). */
  flip?: boolean;
  /**
   * 'epochs' (default): batches cut from a seeded shuffle of the images per epoch, the last partial
   * one dropped, as guided-diffusion's DataLoader (shuffle, drop_last); 'replacement': each image of
   * a batch drawn independently (how difrep drew them before, kept to resume those runs).
   */
  batches?: 'epochs' | 'replacement';
  onStep?: (step: number, loss: number | undefined) => void;
  /** Read the loss back every this many steps (it costs a sync). */
  logEvery?: number;
  /** After each saved state (e.g. to export the EMA weights or draw samples): the EMA weights and every logged [step, loss] so far. */
  onCheckpoint?: (step: number, ema: Ema, losses: readonly [number, number][]) => Promise<void>;
}

/** The EMA weights, kept beside the model's own. */
export class Ema {
  readonly shadow = new Map<string, Tensor>();
  constructor(private e: Engine, private params: Map<string, Tensor>, readonly decay: number) {
    for (const [k, p] of params) this.shadow.set(k, e.keep(e.noGrad(() => scale(p, 1))));
  }

  /** shadow ← decay·shadow + (1 − decay)·param */
  update(): void {
    const e = this.e;
    for (const [k, p] of this.params) {
      const { vec4, count: n } = elementLoads(p.size);
      e.dispatch({
        kernel: emaKernel(vec4),
        bindings: [this.shadow.get(k)!, p],
        params: { n, decay: this.decay, rest: 1 - this.decay },
        workgroups: blockGrid(n, EMA_WORKGROUP),
      });
    }
  }
}

/** Seeded uniform integers in [0, n) for batches and timesteps. */
function generator(seed: number) {
  const rand = mulberry32(seed);
  return (n: number) => Math.floor(rand() * n);
}

/**
 * The draws of pretraining step `step` (its batch with replacement, timesteps, noise seed, dropout
 * seed, in that order): mulberry32 of hashSeeds(seed, step), or with `hashed` false, of
 * seed·1,000,003 + step (see hashedStepSeeds). Its flips use the same seed.
 */
export function stepSeed(seed: number, step: number, hashed = true): number {
  return hashed ? hashSeeds(seed, step) : seed * 1_000_003 + step;
}

/** Uniform integers in [0, n) of step `step`'s draws. */
export function stepGenerator(seed: number, step: number, hashed = true): (n: number) => number {
  return generator(stepSeed(seed, step, hashed));
}

/**
 * Whether a run draws each step's batch, timesteps and noise seed from mulberry32 of
 * hashSeeds(seed, step) — every run since this was written — or, resuming a state saved before
 * (whose settings record no stepSeeds), of seed·1,000,003 + step as it did. mulberry32 of
 * consecutive seeds repeats its k-th draw far more often than chance: with batch 32, 9–25 % of
 * steps drew an earlier step's noise seed (the same ε for the whole batch), and the timesteps
 * spread wider than uniform.
 */
async function hashedStepSeeds(o: PretrainOptions): Promise<boolean> {
  const saved = o.resume && o.checkpoint ? await savedStateSettings(o.checkpoint) : undefined;
  return !saved || 'stepSeeds' in saved;
}

export async function pretrain(e: Engine, unet: UNet, data: ImageSource, o: PretrainOptions): Promise<{ steps: number; losses: [number, number][]; ema: Ema }> {
  const batch = o.batchSize ?? 32;
  const seed = o.seed ?? 0;
  // The CLI bounds these; a library caller's 1.5 made the EMA diverge without a word.
  const checks: [string, number | undefined, (v: number) => boolean, string][] = [
    ['steps', o.steps, (v) => Number.isSafeInteger(v) && v >= 0, 'a whole number ≥ 0'],
    ['batchSize', batch, (v) => Number.isSafeInteger(v) && v >= 1, 'a whole number ≥ 1'],
    ['lr', o.lr, (v) => v > 0 && Number.isFinite(v), 'a number > 0'],
    ['emaDecay', o.emaDecay, (v) => v >= 0 && v <= 1, 'in [0, 1]'],
    ['seed', seed, (v) => Number.isSafeInteger(v) && v >= 0, 'a whole number ≥ 0'],
  ];
  for (const [name, v, ok, want] of checks) if (v !== undefined && !ok(v)) throw new RangeError(`pretrain: ${name} ${v} is not ${want}`);
  const S = unet.plan.flags.image_size;
  const C = unet.plan.flags.in_channels;
  const schedule = linearSchedule(1000);
  // A batch more than one chunk of the U-Net holds (unet-bindings.ts) trains in parts of that many
  // images, gradients added up, each part's loss weighted to the batch's mean, so the step is the
  // whole batch's (guided-diffusion's microbatch adds the parts' unweighted means: K parts give K
  // times the gradient, and a short last part weighs as much as a full one): one backward over all of it would bind x0, ε, x_t and the output whole, and record more
  // GPU commands than may wait at once (a chunk of ADM-256 at 128 MiB bindings is one image).
  const part = Math.min(batch, imagesPerChunk(e, unet.plan, { last: unet.numBlocks, output: true, gradients: true }), e.perBinding(4 * unet.plan.outChannels * S * S));
  const params = unet.parameters();
  const adam = new Adam(e, params, { lr: o.lr ?? 1e-4 });
  const ema = new Ema(e, params, o.emaDecay ?? 0.9999);
  // Adam's moments are freed however the run ends, and the EMA weights unless they are returned: a
  // failed run (a NaN loss, a refused resume) kept both, and retries piled them up.
  let done = false;
  try {
    const losses: [number, number][] = [];
    let step = 0;
    const state = () => new Map<string, Tensor>([...params, ...[...ema.shadow].map(([k, v]) => [`ema.${k}`, v] as [string, Tensor])]);
    // A learn_sigma run trains with L_vb besides the MSE (since this difrep); recorded, so a state of the
    // MSE alone is not resumed into the other loss.
    const loss = unet.plan.outChannels === C ? {} : { loss: 'mse+vb' };
    // Flips and epochs likewise (states saved before them record neither, and resume only without them).
    const flip = o.flip ?? true;
    const epochs = (o.batches ?? 'epochs') === 'epochs';
    const hashed = await hashedStepSeeds(o);
    const settings = { config: unet.plan.flags, batchSize: batch, lr: o.lr ?? 1e-4, emaDecay: ema.decay, seed, images: data.count, ...loss, ...(flip ? { augment: 'flip' } : {}), ...(epochs ? { batches: 'epochs' } : {}), ...(hashed ? { stepSeeds: 'hashed' } : {}) };
    const perEpoch = Math.floor(data.count / batch);
    if (epochs && perEpoch === 0) throw new RangeError(`pretrain: ${data.count} images make no full batch of ${batch}: give a batch of at most ${data.count}, or more images`);
    let epochOrder: { epoch: number; batches: number[][] } | undefined;
    const batchOf = (step: number, rand: (n: number) => number): number[] => {
      if (!epochs) return Array.from({ length: batch }, () => rand(data.count));
      const epoch = Math.floor(step / perEpoch);
      if (epochOrder?.epoch !== epoch) epochOrder = { epoch, batches: epochBatches(data.count, batch, seed * 7919 + epoch + 1, 'pretrain') };
      return epochOrder.batches[step % perEpoch];
    };
    const progress = await startOrResume(e, o.checkpoint, !!o.resume, settings, state(), adam, o.onResume);
    if (progress) {
      if (progress.steps > o.steps) throw new Error(`${o.checkpoint} has already taken ${progress.steps} steps; --steps ${o.steps} is fewer: give --steps ${progress.steps} or more`);
      step = progress.steps;
      losses.push(...JSON.parse(String(progress.losses ?? '[]')));
    }
    let lastSave = performance.now();
    const logEvery = o.logEvery ?? 10;
    // The step after which the loss was last read: a NaN read now arose at one of the steps since.
    let lastRead = step;
    while (step < o.steps) {
      // Everything random in a step derives from (seed, step), so a resumed run draws the same batches.
      const rand = stepGenerator(seed, step, hashed);
      const idx = batchOf(step, rand);
      const ts = idx.map(() => rand(schedule.steps));
      const drawn = await data.images(idx);
      assertFinite(drawn, `the batch of step ${step + 1} (dataset indices ${idx.slice(0, 4).join(', ')}${idx.length > 4 ? ', …' : ''})`);
      const x0Data = flip ? mirrorImages(drawn, batch, C, S, coinFlips(stepSeed(seed, step, hashed), idx.map((_, slot) => slot))) : drawn;
      const noise = gaussianNoise(batch * C * S * S, rand(2 ** 31));
      // ResBlock dropout at the config's rate (drawn only then, so other runs keep their streams).
      const dropoutSeed = unet.plan.flags.dropout ? rand(2 ** 31) : undefined;
      const read = (step + 1) % logEvery === 0 || step + 1 === o.steps;
      const parts = partRanges(batch, part).map(([start, end]) => () => {
        const n = end - start;
        const rows = (a: Float32Array) => a.subarray(start * C * S * S, end * C * S * S);
        const x0 = e.tensor(rows(x0Data), [n, C, S, S], 'x0');
        const eps = e.tensor(rows(noise), [n, C, S, S], 'eps');
        const t = ts.slice(start, end);
        const xt = qSample(e, schedule, x0, t, eps);
        const l = diffusionLoss(schedule, { x0, x0Data: rows(x0Data), xt, noise: eps, t }, unet.forward(xt, t, { output: true, dropoutSeed, firstImage: start }).output!);
        return n === batch ? l : scale(l, n / batch);
      });
      const loss = await trainStep(e, adam, parts, read);
      ema.update();
      step++;
      if (loss !== undefined) {
        const where = step - lastRead > 1 ? `one of steps ${lastRead + 1}–${step} (the loss is read every ${logEvery} steps)` : `step ${step}`;
        losses.push([step, checkLoss(loss, where)]);
        lastRead = step;
      }
      o.onStep?.(step, loss);
      const due = o.checkpoint && (step === o.steps || performance.now() - lastSave > (o.checkpointEverySeconds ?? 300) * 1000);
      if (due) {
        await saveTrainingState(o.checkpoint!, state(), adam, { epoch: 0, steps: step, losses: JSON.stringify(losses) }, settings);
        await o.onCheckpoint?.(step, ema, losses);
        lastSave = performance.now();
      }
    }
    done = true;
    return { steps: step, losses, ema };
  } finally {
    adam.dispose();
    if (!done) for (const t of ema.shadow.values()) t.dispose();
  }
}
