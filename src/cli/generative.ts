// difrep pretrain | sample: train a text-free diffusion U-Net on unlabeled images (Eq. 4) and
// draw samples from it (DDPM or DDIM) as a PNG grid.
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { encode } from 'fast-png';
import { createEngine } from '../engine/engine.ts';
import { writeFileAtomic } from '../model/checkpoint/atomic-write.ts';
import { writeSafetensors } from '../model/checkpoint/safetensors.ts';
import { imageGrid, sample } from '../model/sampling.ts';
import type { UNet } from '../model/unet.ts';
import { loadFashionMnist, toModelInput } from '../train/data/fashion-mnist.ts';
import { type Ema, pretrain } from '../train/pretrain.ts';
import { int, type OptionSpec, parseArgs, UsageError } from './args.ts';
import { loadModel, MODEL_OPTIONS } from './model-options.ts';
import { fmtTime, progressBar } from './progress.ts';

/** Writes `count` images ([count, C, S, S] in [−1, 1]) of `unet`'s shape as a PNG grid, atomically. */
export async function writeImageGridPng(path: string, images: Float32Array, count: number, unet: UNet, cols?: number): Promise<void> {
  const grid = imageGrid(images, count, unet.plan.flags.in_channels, unet.plan.flags.image_size, cols);
  await writeFileAtomic(path, encode({ width: grid.width, height: grid.height, data: grid.rgb, channels: 3, depth: 8 }));
}

const PRETRAIN: Record<string, OptionSpec> = {
  ...MODEL_OPTIONS,
  steps: { help: 'total optimizer steps (a resumed run continues to this count)', default: '1000' },
  batch: { help: 'images per step', default: '32' },
  lr: { help: 'Adam learning rate', default: '1e-4' },
  ema: { help: 'EMA decay of the weights', default: '0.9999' },
  images: { help: 'Fashion-MNIST training images used (0 = all 60,000)', default: '0' },
  seed: { help: 'seed of batches, timesteps and noise', default: '0' },
  'checkpoint-every': { help: 'seconds between training-state saves (each also rewrites ema.safetensors)', default: '300' },
  'sample-every': { help: 'seconds between sample grids (<out>/samples/step-N.png, DDIM 50 steps, EMA weights; 0 = never)', default: '900' },
  out: { help: 'run directory: state.safetensors, ema.safetensors (a plain state dict), loss.json (required)' },
  resume: { help: 'continue from <out>/state.safetensors', flag: true },
};

async function pretrainCommand(argv: string[]): Promise<number> {
  const o = parseArgs('pretrain', argv, PRETRAIN);
  if (!o) return 0;
  if (!o.out) throw new UsageError('difrep pretrain: --out DIR is required');
  const e = await createEngine();
  // Without --checkpoint the weights start from the seeded initialisation (training from scratch).
  const { unet } = await loadModel(e, String(o.model), o.checkpoint as string | undefined, true);
  const ds = await loadFashionMnist('train');
  const count = int(o.images, 'images') || ds.count;
  const size = unet.plan.flags.image_size;
  await mkdir(String(o.out), { recursive: true });
  const t0 = performance.now();
  const bar = progressBar('pretrain', 'steps');
  const steps = int(o.steps, 'steps', 1);
  const sampleEvery = Number(o['sample-every']);
  let lastSample = performance.now();
  const writeEma = async (ema: Ema, step: number) => {
    const tensors: Record<string, { shape: number[]; data: Float32Array }> = {};
    for (const [k, v] of ema.shadow) tensors[k] = { shape: k.endsWith('qkv.weight') || k.endsWith('proj_out.weight') ? [...v.shape.slice(0, 3)] : [...v.shape], data: await v.read() };
    await writeSafetensors(join(String(o.out), 'ema.safetensors'), tensors, { kind: 'difrep-unet-ema', config: JSON.stringify(unet.plan.flags), steps: String(step) });
  };
  const writeSamples = async (ema: Ema, step: number) => {
    const x = await sample(e, unet.withWeights(ema.shadow), { count: 16, seed: 0, ddimSteps: 50 });
    const images = await x.read();
    x.dispose();
    await mkdir(join(String(o.out), 'samples'), { recursive: true });
    await writeImageGridPng(join(String(o.out), 'samples', `step-${String(step).padStart(6, '0')}.png`), images, 16, unet);
  };
  const r = await pretrain(e, unet, { count, labels: ds.labels, images: (idx) => toModelInput(ds, idx, size) }, {
    steps, batchSize: int(o.batch, 'batch', 1), lr: Number(o.lr), emaDecay: Number(o.ema), seed: int(o.seed, 'seed'),
    checkpoint: join(String(o.out), 'state.safetensors'), checkpointEverySeconds: Number(o['checkpoint-every']), resume: !!o.resume,
    onStep: (s, loss) => {
      bar(s, steps);
      if (loss !== undefined && s % 100 === 0) console.log(`step ${s}: loss ${loss.toFixed(4)}`);
    },
    onCheckpoint: async (step, ema) => {
      await writeEma(ema, step);
      if (sampleEvery > 0 && performance.now() - lastSample > sampleEvery * 1000) {
        await writeSamples(ema, step);
        lastSample = performance.now();
      }
    },
  });
  await writeEma(r.ema, r.steps);
  if (sampleEvery > 0) await writeSamples(r.ema, r.steps);
  await writeFileAtomic(join(String(o.out), 'loss.json'), JSON.stringify(r.losses));
  console.log(`pretrained to step ${r.steps} in ${fmtTime((performance.now() - t0) / 1000)}; last loss ${r.losses.at(-1)?.[1].toFixed(4)} → ${o.out}`);
  e.dispose();
  return 0;
}

const SAMPLE: Record<string, OptionSpec> = {
  ...MODEL_OPTIONS,
  count: { help: 'images', default: '16' },
  'ddim-steps': { help: 'DDIM steps (0 = DDPM ancestral sampling over all 1000 steps)', default: '50' },
  seed: { help: 'seed', default: '0' },
  out: { help: 'PNG grid file (required)' },
};

async function sampleCommand(argv: string[]): Promise<number> {
  const o = parseArgs('sample', argv, SAMPLE);
  if (!o) return 0;
  if (!o.out) throw new UsageError('difrep sample: --out FILE.png is required');
  const e = await createEngine();
  const { unet } = await loadModel(e, String(o.model), o.checkpoint as string | undefined);
  const count = int(o.count, 'count', 1);
  const ddim = int(o['ddim-steps'], 'ddim-steps');
  const x = await sample(e, unet, { count, seed: int(o.seed, 'seed'), ddimSteps: ddim, onStep: progressBar('sample', 'steps') });
  await writeImageGridPng(String(o.out), await x.read(), count, unet);
  console.log(`wrote ${count} samples (${ddim ? `DDIM ${ddim} steps` : 'DDPM 1000 steps'}) to ${o.out}`);
  e.dispose();
  return 0;
}

export const GENERATIVE_COMMANDS: Record<string, (argv: string[]) => Promise<number>> = { pretrain: pretrainCommand, sample: sampleCommand };
