// `difrep parity FILE... [--tol 1e-4] [--runtime node|deno|chromium]`: compares the engine with
// PyTorch reference dumps, in this Node process, under Deno, or inside a headless Chromium page.
import { spawn } from 'node:child_process';
import { constants as osConstants } from 'node:os';
import { existsSync } from 'node:fs';
import { basename, join, resolve } from 'node:path';
import { tunedEngine } from './tuning-cache.ts';
import { type OptionSpecs, parseArgs, UsageError } from './args.ts';
import { ensureBuilt, launchChromium, runPage } from './chromium.ts';
import { isCheckout, packageRoot } from './package-root.ts';
import { runParity } from './parity-run.ts';
import { importMapScript, startStaticServer } from './static-server.ts';

const OPTIONS = {
  tol: { type: 'number', above: 0, max: 1, help: 'tolerance of forward tensors, max|a−r|/max|r|', default: 1e-4 },
  'grad-tol': { type: 'number', above: 0, max: 1, help: 'tolerance of gradients and the Adam step', default: 1e-3 },
  unet: { type: 'string', meta: 'FILE', help: 'attention-head and DifFormer dumps: recompute their input features feat.* from input.x0 with the U-Net weights of this dump (adm64.safetensors) and compare them too' },
  runtime: { type: 'string', choices: ['node', 'deno', 'chromium'], help: 'node (Dawn), deno (the same source under Deno\'s WebGPU), or chromium (a headless Chromium page on its own WebGPU, SwiftShader; needs Debian\'s chromium and puppeteer-core)', default: 'node' },
} satisfies OptionSpecs;

const FILES = `FILE.safetensors...

  Rebuilds the model (U-Net, attention head, DifFormer or DifFeed) from each dump's metadata, runs it, and prints per
  tensor the max abs error and max|a-r|/max|r|. Exit 1 if any tensor is above its tolerance.`;

interface ParityArgs {
  files: string[];
  tol: number;
  gradTol: number;
  unet?: string;
  runtime: string;
}

function parseParityArgs(argv: string[]): ParityArgs | null {
  const o = parseArgs('parity', argv, OPTIONS, FILES);
  if (!o) return null;
  if (!o._.length) throw new UsageError('difrep parity: no dump given (difrep parity FILE.safetensors...; see --help)');
  for (const f of [...o._, ...(o.unet ? [o.unet] : [])]) {
    if (!existsSync(f)) throw new UsageError(`difrep parity: ${f}: no such file`);
  }
  return { files: o._, tol: o.tol, gradTol: o['grad-tol'], unet: o.unet, runtime: o.runtime };
}

async function inNode(o: ParityArgs): Promise<number> {
  const engine = await tunedEngine();
  const ok = await runParity(engine, o.files.map((f) => ({ name: f, source: f })), o, (l) => console.log(l));
  await engine.dispose();
  return ok ? 0 : 1;
}

/**
 * The same CLI source under Deno (the npm `deno` package, or `deno` on the PATH). A stop signal to
 * this process goes on to Deno: run by spawnSync, which forwards none, Deno ran on orphaned.
 */
async function inDeno(argv: string[]): Promise<number> {
  const root = packageRoot();
  const local = join(root, 'node_modules', '.bin', 'deno');
  const deno = existsSync(local) ? local : 'deno';
  const rest = argv.filter((a, i) => a !== '--runtime' && argv[i - 1] !== '--runtime' && !a.startsWith('--runtime='));
  console.log(`runtime: Deno (${deno})`);
  // Deno strips no TypeScript under node_modules: an installed package runs its built JavaScript.
  const main = isCheckout(root) ? join(root, 'src', 'cli', 'main.ts') : join(root, 'dist', 'src', 'cli', 'main.js');
  // --no-prompt: a permission it lacks (sys, for the CPU's name) is refused, not asked at a terminal.
  const child = spawn(deno, ['run', '--quiet', '--no-prompt', '--unstable-webgpu', '--allow-read', '--allow-env', main, 'parity', ...rest], { stdio: 'inherit' });
  const forward = (signal: NodeJS.Signals) => void child.kill(signal);
  const signals = ['SIGTERM', 'SIGINT', 'SIGHUP'] as const;
  for (const s of signals) process.on(s, forward);
  try {
    return await new Promise<number>((done, fail) => {
      child.once('error', (err) => fail(new UsageError(`cannot start Deno (${err.message}): npm install deno, or put deno on the PATH`)));
      child.once('exit', (code, signal) => done(code ?? 128 + (signal ? osConstants.signals[signal] : 0)));
    });
  } finally {
    for (const s of signals) process.off(s, forward);
  }
}

async function inChromium(o: ParityArgs): Promise<number> {
  const root = packageRoot();
  ensureBuilt(root, (l) => console.log(l));
  const files: Record<string, string> = {};
  const url = (f: string, i: number) => {
    const path = `/files/${i}/${encodeURIComponent(basename(f))}`;
    files[path] = resolve(f);
    return path;
  };
  const q = new URLSearchParams();
  o.files.forEach((f, i) => q.append('file', url(f, i)));
  if (o.unet) q.set('unet', url(o.unet, o.files.length));
  q.set('tol', String(o.tol));
  q.set('gradTol', String(o.gradTol));
  const page = `<!doctype html><html><head><meta charset="utf-8"><title>difrep parity</title>${importMapScript()}</head>
<body><script type="module" src="/dist/src/cli/browser/parity-page.js"></script></body></html>`;
  const server = await startStaticServer({ dirs: { '/dist/': join(root, 'dist') }, files, pages: { '/parity.html': page } });
  const browser = await launchChromium();
  try {
    console.log(`runtime: ${await browser.version()} (headless)`);
    const run = await runPage(browser, `${server.url}/parity.html?${q}`, (l) => console.log(l));
    for (const e of run.errors) console.error(`page error: ${e}`);
    // An error the page logged (a GPU validation error, an exception) fails the run, as in `difrep example`.
    return run.exit === 0 && run.errors.length ? 1 : run.exit;
  } finally {
    await browser.close();
    await server.close();
  }
}

export async function parityCommand(argv: string[]): Promise<number> {
  const o = parseParityArgs(argv);
  if (!o) return 0;
  if (o.runtime === 'deno') return inDeno(argv);
  if (o.runtime === 'chromium') return inChromium(o);
  return inNode(o);
}
