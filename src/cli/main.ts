// The `difrep` command line.
import { NoAdapterError } from '../engine/device.ts';
import { UsageError } from './args.ts';
import { EXPERIMENT_COMMANDS } from './experiments.ts';
import { GENERATIVE_COMMANDS } from './generative.ts';
import { demoCommand } from './demo.ts';
import { exampleCommand } from './example.ts';
import { parityCommand } from './parity.ts';
import { tuneCommand } from './tune.ts';

const USAGE = `usage: difrep <command> [options]

commands:
  parity FILE...   compare the engine with PyTorch reference dumps (../shared/reference format)
  extract          write U-Net features f(x0, t, b) of a dataset to a sharded, resumable cache
  train            train and evaluate a head: linear, attention, difformer (cached features) or difeed (live U-Net)
  knn              weighted kNN classification of cached features
  cka              linear CKA between blocks or timesteps (JSON + PNG heatmap)
  sweep            linear-probe accuracy over a grid of b × t × pool (JSON + PNG heatmaps)
  merge            check a sharded feature cache is complete and intact, and write its manifest
  eval             score a trained head on any split: top-1/top-5, accuracy per class, confusion matrix
  pretrain         train a text-free diffusion U-Net on Fashion-MNIST images (Eq. 4), resumable
  sample           draw DDPM/DDIM samples from a U-Net as a PNG grid
  demo             the main job: sample from the shipped small U-Net, train and compare every head on its features
  example          serve the browser example page (examples/browser/) on 127.0.0.1
  tune             time GEMM register tiles on this adapter (60 s by default) and cache the winners for every command

Run \`difrep <command> --help\` for a command's options.`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  switch (command) {
    case 'parity':
      return parityCommand(rest);
    case 'extract':
    case 'train':
    case 'knn':
    case 'cka':
    case 'sweep':
    case 'merge':
    case 'eval':
      return EXPERIMENT_COMMANDS[command](rest);
    case 'pretrain':
    case 'sample':
      return GENERATIVE_COMMANDS[command](rest);
    case 'example':
      return exampleCommand(rest);
    case 'demo':
      return demoCommand(rest);
    case 'tune':
      return tuneCommand(rest);
    case undefined:
    case '--help':
    case '-h':
      console.log(USAGE);
      return 0;
    default:
      console.error(`unknown command "${command}"\n\n${USAGE}`);
      return 2;
  }
}

// Output piped into a reader that stopped (`difrep train … | head -1`): the run stops as a stop
// signal stops it (locks released), not with an unhandled 'error' event's stack trace.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') throw err;
    process.kill(process.pid, 'SIGTERM');
  });
}

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (e) {
  // Expected failures (no adapter, a bad checkpoint, a bad argument) print one clear line.
  const err = e as Error;
  // A subclass's name says what failed (CheckpointError, RangeError); a plain Error's adds nothing.
  const message = err instanceof NoAdapterError || err instanceof UsageError || err.name === 'Error' ? err.message : `${err.name}: ${err.message}`;
  console.error(message.startsWith('difrep ') ? message : `difrep: ${message}`);
  // 2 for a usage error (as for an unknown command), 1 for a failure of the work itself.
  process.exitCode = err instanceof UsageError ? 2 : 1;
}
