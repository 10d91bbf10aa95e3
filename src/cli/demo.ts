// `difrep demo` (npm run demo): the paper in miniature on the shipped small U-Net (the pipeline is
// src/train/miniature.ts). Parses, runs, prints the table and writes it as JSON and a bar chart
// (SVG and PNG).
import { join } from 'node:path';
import { tunedEngine } from './tuning-cache.ts';
import { writeFileAtomic } from '../model/checkpoint/atomic-write.ts';
import { assertFiniteJson } from '../train/finite.ts';
import { fmtPercent } from '../train/format-percent.ts';
import { checkMiniatureHeads, runMiniature, sweepFitCount } from '../train/miniature.ts';
import { given, type OptionSpecs, parseArgs, UsageError } from './args.ts';
import { checkOutputFolder } from './output-file.ts';
import { loadModel } from './model-options.ts';
import { packageRoot } from './package-root.ts';
import { fmtTime, progressBar } from './progress.ts';
import { barChartSvg } from './render/charts.ts';
import { writeSweepHeatmaps } from './render/sweep-heatmaps.ts';
import { writeChart } from './render/write-chart.ts';

const root = packageRoot();

const OPTIONS = {
  model: { type: 'string', help: 'U-Net config', default: join(root, 'models', 'fmnist16.json') },
  checkpoint: { type: 'string', meta: 'FILE', help: 'U-Net weights', default: join(root, 'models', 'fmnist16.safetensors') },
  'train-per-class': { type: 'int', min: 5, max: 6000, help: 'training images per class (a seeded, balanced subset; 20% of it is the validation split of the probe sweeps)', default: 100 },
  'test-per-class': { type: 'int', min: 1, max: 1000, help: 'test images per class (200: 2,000 test images, a top-1 standard error of at most 1.1 points)', default: 200 },
  full: { type: 'flag', help: 'all 60,000 training and 10,000 test images (hours on a CPU)' },
  epochs: { type: 'int', min: 1, max: 10_000, help: 'epochs of every cached-feature head (paper 28)', default: 10 },
  'sweep-epochs': { type: 'int', min: 1, max: 10_000, help: 'epochs of each probe of the validation sweeps (they only rank settings; the chosen probe then trains for --epochs)', default: 5 },
  'step-size': { type: 'int', min: 1, max: 10_000, help: 'StepLR: the learning rate drops ×0.1 every this many epochs (paper 7)', default: 7 },
  batch: { type: 'int', min: 1, max: 65_536, help: 'batch size of the cached-feature heads (paper 128; smaller for a subset, so they get more steps)', default: 32 },
  'difeed-epochs': { type: 'int', min: 1, max: 10_000, help: 'epochs of DifFeed (two U-Net passes and a backward per step; batch 16 as in the paper)', default: 4 },
  'difeed-step-size': { type: 'int', min: 1, max: 10_000, help: 'DifFeed\'s StepLR: its learning rates drop ×0.1 every this many epochs (the default drops them for the last epoch, so the curve settles)', default: 3 },
  'head-dim': { type: 'int', min: 8, max: 16_384, help: 'token width d of the Attention, DifFormer and DifFeed heads (paper 1024)', default: 64 },
  'head-layers': { type: 'int', min: 1, max: 64, help: 'Transformer layers of those heads (paper 2)', default: 1 },
  'head-lr': { type: 'number', above: 0, max: 10, help: 'Adam learning rate of the Attention and DifFormer heads and of DifFeed\'s head (CLARIFICATIONS default 1e-4, meant for ImageNet-length runs; the demo\'s ~320 steps need more)', default: 1e-3 },
  'pre-pool': { type: 'int', min: 1, max: 1024, help: 'the heads\' tokenizer pools feature maps to at most this size (paper 16, for 16×16 maps of 256×256 images)', default: 4 },
  seed: { type: 'int', min: 0, max: 2 ** 31 - 1, help: 'seed of subsets, noise, initialisation and shuffles', default: 0 },
  out: { type: 'string', meta: 'DIR', help: 'output directory: samples.png, results.json, results.png, feature caches', default: 'out/demo' },
} satisfies OptionSpecs;

export async function demoCommand(argv: string[]): Promise<number> {
  const o = parseArgs('demo', argv, OPTIONS);
  if (!o) return 0;
  // Checked before the model loads: found by the heads, they ended minutes of sampling, extraction and sweeps.
  if (o.full && (given(argv, 'train-per-class') || given(argv, 'test-per-class'))) throw new UsageError('difrep demo: --full uses all 60,000 training and 10,000 test images: leave out --train-per-class and --test-per-class');
  if (o['head-dim'] % 4 !== 0) throw new UsageError(`difrep demo: --head-dim ${o['head-dim']} does not split into the heads' 4 attention heads: give a multiple of 4`);
  const images = o.full ? 60_000 : 10 * o['train-per-class'];
  if (o.batch > sweepFitCount(images)) {
    throw new UsageError(`difrep demo: --batch ${o.batch} is more than the ${sweepFitCount(images)} images the sweeps fit their probes on (80 % of ${images} training images): give --batch ${sweepFitCount(images)} or less, or a larger --train-per-class`);
  }
  await checkOutputFolder('demo', 'out', o.out);
  const started = performance.now();
  const e = await tunedEngine();
  const { unet, hash, sha256 } = await loadModel(e, o.model, o.checkpoint);
  try {
    checkMiniatureHeads(e, unet, { headDim: o['head-dim'], headLayers: o['head-layers'], prePool: o['pre-pool'] });
  } catch (err) {
    // The heads name the train command's options (--dim, --layers).
    throw new UsageError(`difrep demo: ${(err as Error).message.replace(/--dim\b/g, '--head-dim').replace(/--layers\b/g, '--head-layers')}`);
  }
  const S = unet.plan.flags.image_size;
  console.log(`difrep demo: U-Net ${o.checkpoint} (${unet.plan.blocks.length} blocks, ${S}×${S}, sha256 ${hash}…) on ${e.handle.info.description || e.handle.info.vendor}`);
  const r = await runMiniature(e, unet, {
    outDir: o.out, checkpointHash: hash, trainPerClass: o['train-per-class'], testPerClass: o['test-per-class'], full: o.full, epochs: o.epochs, sweepEpochs: o['sweep-epochs'], stepSize: o['step-size'],
    batchSize: o.batch, difeedEpochs: o['difeed-epochs'], difeedStepSize: o['difeed-step-size'], headDim: o['head-dim'], headLayers: o['head-layers'], headLr: o['head-lr'], prePool: o['pre-pool'],
    seed: o.seed, progress: progressBar,
  }, (line) => console.log(line));
  console.log(`\n| method | features | top-1 (± s.e.) | − raw pixels (± paired s.e.) | top-5 | trainable params | time |\n|---|---|---|---|---|---|---|`);
  const raw = r.rows[0];
  // From the hit counts: top-1s subtracted as fractions printed a gap of 79/2000 (3.95) as 3.9.
  const hits = (top1: number) => Math.round(top1 * r.data.test);
  for (const row of r.rows) {
    const gap = row === raw ? '' : `${fmtPercent((hits(row.top1) - hits(raw.top1)) / r.data.test)} ± ${fmtPercent(row.vsRawStdErr)}`;
    console.log(`| ${row.method} | ${row.features} | ${fmtPercent(row.top1)}% ± ${fmtPercent(row.top1StdErr)} | ${gap} | ${fmtPercent(row.top5)}% | ${row.params.toLocaleString('en')} | ${fmtTime(row.seconds)} |`);
  }
  const total = (performance.now() - started) / 1000;
  const result = { checkpoint: o.checkpoint, sha256, adapter: e.handle.info, ...r, seconds: total };
  assertFiniteJson(result, 'results.json: results');
  await writeFileAtomic(join(o.out, 'results.json'), JSON.stringify(result, null, 2) + '\n');
  const chart = await writeChart(join(o.out, 'results.png'), barChartSvg(`Fashion-MNIST top-1, ${r.data.test} test images`, r.rows.map((row) => ({ label: row.method, value: row.top1, error: row.top1StdErr }))));
  const heatmaps = await writeSweepHeatmaps(o.out, r.sweep.map((p) => ({ ...p, value: p.val })), {
    title: (pool, std) => `GD sweep, validation top-1 after ${o['sweep-epochs']} epochs, pool ${pool}×${pool}${std ? ', standardised' : ''}`, row: (b) => `b${b}`, column: (t) => `t${t}`,
  });
  console.log(`\nwrote ${join(o.out, 'results.json')}, ${chart.svg}, ${chart.png}, ${join(o.out, 'samples.png')} and the sweep's validation heatmaps ${heatmaps.join(', ')}; total ${fmtTime(total)}`);
  await e.dispose();
  return 0;
}
