// difrep pretrain | sample: train a text-free diffusion U-Net on unlabeled images (Eq. 4) and
// draw samples from it (DDPM or DDIM) as a PNG grid.
import { mkdir } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { tunedEngine } from './tuning-cache.ts';
import { writeFileAtomic } from '../model/checkpoint/atomic-write.ts';
import { writeSafetensors } from '../model/checkpoint/safetensors.ts';
import { planUNet } from '../model/unet-config.ts';
import { checkSampleOptions, DIFFUSION_STEPS, MAX_SAMPLE_COUNT, sample } from '../model/sampling.ts';
import { writeImageGridPng } from '../train/sample-grid.ts';
import { loadFashionMnist, toModelInput } from '../train/data/fashion-mnist.ts';
import { type Ema, pretrain } from '../train/pretrain.ts';
import { type OptionSpecs, parseArgs, UsageError } from './args.ts';
import { loadModel, MODEL_OPTIONS, resolveFlags } from './model-options.ts';
import { fmtTime, progressBar } from './progress.ts';
import { lineChartSvg } from './render/charts.ts';
import { writeChart } from './render/write-chart.ts';
import { checkNotKept, checkOutputFile, checkOutputFolder } from './output-file.ts';
import { holdRunFolder } from './run-folder.ts';

const PRETRAIN = {
  ...MODEL_OPTIONS,
  checkpoint: { type: 'string', meta: 'FILE', help: 'weights to start from (.pt or .safetensors); without it, guided-diffusion\'s initialisation seeded by --seed' },
  steps: { type: 'int', min: 1, max: 100_000_000, help: 'total optimizer steps (a resumed run continues to this count)', default: 1000 },
  batch: { type: 'int', min: 1, max: 65_536, help: 'images per step (more than one U-Net chunk holds train in parts, their gradients added up: the same step)', default: 32 },
  lr: { type: 'number', above: 0, max: 1, help: 'Adam learning rate', default: 1e-4 },
  ema: { type: 'number', min: 0, max: 1, help: 'EMA decay of the weights', default: 0.9999 },
  images: { type: 'int', min: 0, max: 60_000, help: 'Fashion-MNIST training images used (0 = all 60,000)', default: 0 },
  seed: { type: 'int', min: 0, max: 2 ** 31 - 1, help: 'seed of the initial weights (without --checkpoint), batches, timesteps and noise', default: 0 },
  'checkpoint-every': { type: 'number', above: 0, help: 'seconds between training-state saves (each also rewrites ema.safetensors)', default: 300 },
  'sample-every': { type: 'number', min: 0, help: 'seconds between sample grids (<out>/samples/step-N.png, DDIM 50 steps, EMA weights; drawn at the first save after that many seconds, so at most every --checkpoint-every seconds, and at the end; 0 = never)', default: 900 },
  out: { type: 'string', meta: 'DIR', required: true, help: 'run directory: state.safetensors, ema.safetensors (a plain state dict), loss.json' },
  resume: { type: 'flag', help: 'continue the run in --out (same settings; --steps may grow)' },
  flip: { type: 'string', choices: ['true', 'false'], help: 'mirror each drawn image with probability 1/2 (guided-diffusion\'s random_flip)', default: 'true' },
  batches: { type: 'string', choices: ['epochs', 'replacement'], help: 'epochs: each image once per epoch, shuffled, the last partial batch dropped (guided-diffusion\'s DataLoader); replacement: images drawn independently (runs before this option; --flip false --batches replacement resumes them)', default: 'epochs' },
} satisfies OptionSpecs;

async function pretrainCommand(argv: string[]): Promise<number> {
  const o = parseArgs('pretrain', argv, PRETRAIN);
  if (!o) return 0;
  // The shadow starts as the initial weights (as guided-diffusion's, which trains 100k+ steps): over
  // few steps a slow EMA exports mostly those.
  const initialShare = o.ema ** o.steps;
  if (initialShare > 0.05) {
    // e^−3 ≈ 5 % of the start is left after steps of decay 1 − 3/steps; under 4 steps no decay leaves so little.
    const advice = o.steps >= 4 ? `give --ema ${(1 - 3 / o.steps).toPrecision(3)} or lower, or more --steps` : 'give more --steps';
    console.error(`difrep: warning: with --ema ${o.ema} over ${o.steps} steps, ${(100 * initialShare).toFixed(0)} % of ema.safetensors (and of the samples) is still the starting weights; ${advice}`);
  }
  await checkOutputFolder('pretrain', 'out', o.out);
  // The run writes these in --out: the starting weights must not be one of them.
  if (o.checkpoint) for (const f of ['ema.safetensors', 'state.safetensors']) await checkNotKept('pretrain', 'out', join(o.out, f), [{ path: o.checkpoint, what: 'the starting weights --checkpoint reads' }]);
  const e = await tunedEngine();
  // Without --checkpoint the weights start from guided-diffusion's initialisation, seeded by --seed.
  const { unet } = await loadModel(e, o.model, o.checkpoint, { scratchSeed: o.seed });
  if (unet.plan.flags.in_channels !== 3) {
    e.dispose();
    throw new UsageError(`difrep pretrain: it feeds Fashion-MNIST as 3 channels (the grey image repeated), but --model ${o.model} has in_channels ${unet.plan.flags.in_channels}: give a config with in_channels 3`);
  }
  const ds = await loadFashionMnist('train');
  const count = o.images || ds.count;
  const size = unet.plan.flags.image_size;
  const lock = await holdRunFolder(o.out);
  try {
    const t0 = performance.now();
    const bar = progressBar('pretrain', 'steps');
    const steps = o.steps;
    const sampleEvery = o['sample-every'];
    let lastSample = performance.now();
    const writeEma = async (ema: Ema, step: number) => {
      const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
      for (const [k, v] of ema.shadow) tensors[k] = { shape: k.endsWith('qkv.weight') || k.endsWith('proj_out.weight') ? [...v.shape.slice(0, 3)] : [...v.shape], data: await v.read() };
      await writeSafetensors(join(o.out, 'ema.safetensors'), tensors, { kind: 'difrep-unet-ema', config: JSON.stringify(unet.plan.flags), steps: String(step) });
    };
    const writeSamples = async (ema: Ema, step: number) => {
      const x = await sample(e, unet.withWeights(ema.shadow), { count: 16, seed: 0, ddimSteps: 50 });
      const images = await x.read();
      x.dispose();
      await mkdir(join(o.out, 'samples'), { recursive: true });
      await writeImageGridPng(join(o.out, 'samples', `step-${String(step).padStart(6, '0')}.png`), images, 16, unet.plan.flags.in_channels, unet.plan.flags.image_size);
    };
    // The loss so far as JSON and as a chart (loss.svg, loss.png), rewritten at every checkpoint.
    const writeLoss = async (losses: readonly [number, number][]) => {
      await writeFileAtomic(join(o.out, 'loss.json'), JSON.stringify(losses));
      if (losses.length >= 2) await writeChart(join(o.out, 'loss.png'), lineChartSvg(`pretraining loss (${o.model}, batch ${o.batch})`, [...losses], 'step', unet.plan.flags.learn_sigma ? 'MSE of the noise (Eq. 4) + L_vb' : 'MSE of the noise (Eq. 4)'));
    };
    const r = await pretrain(e, unet, { count, labels: ds.labels, images: (idx) => toModelInput(ds, idx, size) }, {
      steps, batchSize: o.batch, lr: o.lr, emaDecay: o.ema, seed: o.seed, flip: o.flip === 'true', batches: o.batches as 'epochs' | 'replacement',
      checkpoint: join(o.out, 'state.safetensors'), checkpointEverySeconds: o['checkpoint-every'], resume: o.resume, onResume: (line) => console.log(line),
      onStep: (s, loss) => {
        bar(s, steps);
        if (loss !== undefined && s % 100 === 0) console.log(`step ${s}: loss ${loss.toFixed(4)}`);
      },
      onCheckpoint: async (step, ema, losses) => {
        await writeEma(ema, step);
        await writeLoss(losses);
        if (sampleEvery > 0 && performance.now() - lastSample > sampleEvery * 1000) {
          await writeSamples(ema, step);
          lastSample = performance.now();
        }
      },
    });
    await writeEma(r.ema, r.steps);
    if (sampleEvery > 0) await writeSamples(r.ema, r.steps);
    await writeLoss(r.losses);
    console.log(`pretrained to step ${r.steps} in ${fmtTime((performance.now() - t0) / 1000)}; last loss ${r.losses.at(-1)?.[1].toFixed(4)} → ${o.out}`);
    e.dispose();
  } finally {
    await lock.release();
  }
  return 0;
}

const SAMPLE = {
  ...MODEL_OPTIONS,
  count: { type: 'int', min: 1, max: MAX_SAMPLE_COUNT, help: 'images', default: 16 },
  'ddim-steps': { type: 'int', min: 0, max: DIFFUSION_STEPS, help: `DDIM steps, 2 to ${DIFFUSION_STEPS} (0 = DDPM ancestral sampling over all ${DIFFUSION_STEPS} steps)`, default: 50 },
  seed: { type: 'int', min: 0, max: 2 ** 32 - 1, help: 'seed', default: 0 },
  out: { type: 'string', meta: 'FILE.png', required: true, help: 'PNG grid file' },
} satisfies OptionSpecs;

async function sampleCommand(argv: string[]): Promise<number> {
  const o = parseArgs('sample', argv, SAMPLE);
  if (!o) return 0;
  const ddim = o['ddim-steps'];
  try {
    checkSampleOptions({ count: o.count, seed: o.seed, ddimSteps: ddim }); // before the model loads
  } catch (err) {
    // The library names its options (ddimSteps); the user typed flags (--ddim-steps).
    const flag = { count: '--count', seed: '--seed', ddimSteps: '--ddim-steps' } as Record<string, string>;
    throw new UsageError(`difrep sample: ${(err as Error).message.replace(/^sample: (\w+)/, (_, name: string) => flag[name] ?? name)}`);
  }
  await checkOutputFile('sample', 'out', o.out, o.checkpoint ? [{ path: o.checkpoint, what: 'the U-Net weights --checkpoint reads' }] : []);
  if (extname(o.out).toLowerCase() !== '.png') throw new UsageError(`difrep sample: --out ${o.out}: the sample grid is written as a PNG; give a file name ending in .png`);
  const flags = await resolveFlags(o.model);
  const channels = planUNet(flags).flags.in_channels;
  if (channels !== 1 && channels !== 3) throw new UsageError(`difrep sample: --model ${o.model} has in_channels ${channels}; the sample grid is a picture of 1 (grey) or 3 (RGB) channels`);
  const e = await tunedEngine();
  const { unet } = await loadModel(e, o.model, o.checkpoint, { flags });
  const x = await sample(e, unet, { count: o.count, seed: o.seed, ddimSteps: ddim, onStep: progressBar('sample', 'steps') });
  await writeImageGridPng(o.out, await x.read(), o.count, unet.plan.flags.in_channels, unet.plan.flags.image_size);
  console.log(`wrote ${o.count} samples (${ddim ? `DDIM ${ddim} steps` : `DDPM ${DIFFUSION_STEPS} steps`}) to ${o.out}`);
  e.dispose();
  return 0;
}

export const GENERATIVE_COMMANDS: Record<string, (argv: string[]) => Promise<number>> = { pretrain: pretrainCommand, sample: sampleCommand };
