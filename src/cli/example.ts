// `difrep example`: serves the browser example page (examples/browser/) with a U-Net checkpoint on
// 127.0.0.1; with --screenshot it instead opens the page in headless Chromium, runs one
// extraction on the bundled samples, saves a screenshot and exits with the page's verdict.
import { existsSync } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { writeFileAtomic } from '../model/checkpoint/atomic-write.ts';
import { isSafetensors } from '../model/checkpoint/safetensors.ts';
import { given, type OptionSpecs, parseArgs, UsageError } from './args.ts';
import { ensureBuilt, launchChromium, runPage } from './chromium.ts';
import { resolveFlags } from './model-options.ts';
import { checkOutputFile } from './output-file.ts';
import { packageRoot } from './package-root.ts';
import { importMapScript, startStaticServer, type StaticServer } from './static-server.ts';

const root = packageRoot();
const SHIPPED = { model: join(root, 'models', 'fmnist16.json'), checkpoint: join(root, 'models', 'fmnist16.safetensors') };

const OPTIONS = {
  model: { type: 'string', help: 'U-Net config (preset or .json)', default: SHIPPED.model },
  checkpoint: { type: 'string', meta: 'FILE', help: 'weights (.safetensors; a reference dump\'s param.* also works)', default: SHIPPED.checkpoint },
  port: { type: 'int', min: 0, max: 65535, help: 'port on 127.0.0.1 (0: any free port; with --screenshot, any free port unless given)', default: 8080 },
  screenshot: { type: 'string', meta: 'FILE.png', help: 'headless: run one extraction in Chromium, save a PNG screenshot here, and exit' },
} satisfies OptionSpecs;

export async function startExampleServer(model: string, checkpoint: string, port = 0): Promise<StaticServer> {
  if (!existsSync(checkpoint)) throw new UsageError(`difrep example: checkpoint ${checkpoint} not found; pass --checkpoint FILE.safetensors (and --model) for another U-Net`);
  // The page reads safetensors only: a .pt was served, and failed in the page with a garbage header length.
  const head = new Uint8Array(16);
  const fd = await open(checkpoint, 'r');
  try {
    await fd.read(head, 0, 16, 0);
  } finally {
    await fd.close();
  }
  if (!isSafetensors(head)) throw new UsageError(`difrep example: ${checkpoint} is not a safetensors file (the page reads safetensors only): export its state dict with safetensors.torch.save_file, or pass another --checkpoint`);
  ensureBuilt(root, (l) => console.log(l));
  const flags = await resolveFlags(model);
  const html = (await readFile(join(root, 'examples', 'browser', 'index.html'), 'utf8')).replace('<!--IMPORTMAP-->', importMapScript());
  return startStaticServer({
    dirs: { '/dist/': join(root, 'dist'), '/examples/': join(root, 'examples', 'browser') },
    files: { '/model/weights.safetensors': checkpoint },
    pages: { '/': html, '/model/config.json': { type: 'application/json', body: JSON.stringify({ name: basename(checkpoint), flags }) } },
    port,
  });
}

async function screenshot(server: StaticServer, file: string): Promise<number> {
  const browser = await launchChromium();
  try {
    const run = await runPage(browser, `${server.url}/?auto`, (l) => console.log(`page: ${l}`), 15 * 60_000, { width: 1100, height: 760 });
    for (const e of run.errors) console.error(`page error: ${e}`);
    await writeFileAtomic(file, await run.page.screenshot({ fullPage: true }));
    console.log(`screenshot → ${file}`);
    return run.exit === 0 && run.errors.length === 0 ? 0 : 1;
  } finally {
    await browser.close();
  }
}

export async function exampleCommand(argv: string[]): Promise<number> {
  const o = parseArgs('example', argv, OPTIONS);
  if (!o) return 0;
  // Checked before the build and the page's run (minutes): a missing folder failed only at the end,
  // and --screenshot naming the weights would have replaced them with a PNG.
  if (o.screenshot) await checkOutputFile('example', 'screenshot', o.screenshot, [{ path: o.checkpoint, what: 'the weights --checkpoint serves' }, { path: o.model, what: 'the config --model names' }]);
  const server = await startExampleServer(o.model, o.checkpoint, o.screenshot && !given(argv, 'port') ? 0 : o.port);
  if (o.screenshot) {
    try {
      return await screenshot(server, o.screenshot);
    } finally {
      await server.close();
    }
  }
  console.log(`example page: ${server.url}/  (WebGPU browser needed; Ctrl-C stops the server)`);
  await new Promise(() => {});
  return 0;
}
