// Headless Chromium for the browser runs (parity, the example page's test): Debian's `chromium`
// with WebGPU on (headless it picks Chrome's own SwiftShader Vulkan, not lavapipe), driven over
// the DevTools protocol by puppeteer-core. puppeteer-core rather than playwright-core: it drives
// the system browser with no download step and a tenth of the install size, and Chromium is the
// only browser these runs need.
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { UsageError } from './args.ts';
import { isCheckout } from './package-root.ts';

export const CHROMIUM_FLAGS = ['--enable-unsafe-webgpu', '--enable-features=Vulkan'];

function findChromium(): string {
  const candidates = [process.env.DIFREP_CHROMIUM, '/usr/bin/chromium', '/usr/bin/chromium-browser'].filter(Boolean) as string[];
  const found = candidates.find((c) => existsSync(c));
  if (!found) throw new UsageError('no Chromium found: install Debian\'s chromium (`bash scripts/setup.sh --browser`, or apt-get install chromium), or set DIFREP_CHROMIUM to a Chromium binary');
  return found;
}

type Browser = import('puppeteer-core').Browser;
type Page = import('puppeteer-core').Page;

export async function launchChromium(): Promise<Browser> {
  let launch: typeof import('puppeteer-core').launch;
  try {
    ({ launch } = await import('puppeteer-core'));
  } catch {
    throw new UsageError('the browser runs need puppeteer-core: npm install puppeteer-core');
  }
  const args = [...CHROMIUM_FLAGS];
  if (process.getuid?.() === 0) args.push('--no-sandbox'); // Chromium refuses root without it
  // Long GPU work in a page must not trip the DevTools call timeout (puppeteer's default is 3 min).
  return launch({ executablePath: findChromium(), headless: true, args, protocolTimeout: 24 * 3600_000 });
}

export interface PageRun {
  page: Page;
  /** What the page left in globalThis.difrepExit. */
  exit: number;
  /** Uncaught exceptions and console errors, in order. */
  errors: string[];
}

/** How long a page may go without a verdict after an error that can stop its script. */
const FATAL_GRACE_MS = 5000;

/**
 * Opens `url`, passes its console lines to `onConsole`, and waits until the page sets
 * globalThis.difrepExit (or `timeoutMs`). An uncaught exception, a script that cannot load or a
 * module that cannot resolve, with no verdict within a few seconds after it, ends the wait with
 * exit 2: such a page never sets a verdict (the wait had no end). The page stays open for
 * screenshots; close the browser.
 */
export async function runPage(browser: Browser, url: string, onConsole: (line: string) => void, timeoutMs = 0, viewport?: { width: number; height: number }): Promise<PageRun> {
  const page = await browser.newPage();
  if (viewport) await page.setViewport(viewport);
  const errors: string[] = [];
  let fatalAt = 0;
  const fatal = (message: string) => {
    errors.push(message);
    fatalAt ||= Date.now();
  };
  const isScript = (u: string) => /\.m?js(\?|$)/.test(u);
  page.on('console', (m) => {
    const text = m.text();
    if (m.type() === 'error') {
      if (/module specifier|dynamically imported module/i.test(text)) fatal(text);
      else errors.push(text);
    }
    onConsole(text);
  });
  page.on('pageerror', (e) => fatal(`uncaught: ${(e as Error).message}`));
  page.on('requestfailed', (r) => isScript(r.url()) && fatal(`cannot load ${r.url()}: ${r.failure()?.errorText ?? 'failed'}`));
  page.on('response', (r) => isScript(r.url()) && r.status() >= 400 && fatal(`cannot load ${r.url()}: HTTP ${r.status()}`));
  await page.goto(url, { waitUntil: 'load' });
  const started = Date.now();
  for (;;) {
    const exit = (await page.evaluate('globalThis.difrepExit')) as number | undefined;
    if (exit !== undefined) return { page, exit, errors };
    if (fatalAt && Date.now() - fatalAt > FATAL_GRACE_MS) return { page, exit: 2, errors: [...errors, `no verdict ${FATAL_GRACE_MS / 1000} s after that error`] };
    if (timeoutMs > 0 && Date.now() - started > timeoutMs) throw new Error(`${url}: no verdict after ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/**
 * Builds dist/ (what the browser loads) when it is missing or older than the TypeScript source, in
 * a checkout; an installed package comes built (its unpacked sources are newer than its dist/).
 */
export function ensureBuilt(root: string, log: (line: string) => void): void {
  const entry = join(root, 'dist', 'src', 'index.js');
  if (!isCheckout(root)) {
    if (!existsSync(entry)) throw new UsageError(`${entry} is missing from this installed difrep: reinstall the package`);
    return;
  }
  const builtAt = existsSync(entry) ? statSync(entry).mtimeMs : -1;
  const newest = (dir: string): number => readdirSync(dir, { withFileTypes: true }).reduce((m, d) => {
    const p = join(dir, d.name);
    return Math.max(m, d.isDirectory() ? newest(p) : d.name.endsWith('.ts') ? statSync(p).mtimeMs : 0);
  }, 0);
  const sources = ['src', 'kernels'].map((d) => join(root, d)).filter(existsSync);
  if (builtAt >= 0 && sources.every((d) => newest(d) <= builtAt)) return;
  let tsc: string;
  try {
    tsc = createRequire(join(root, 'package.json')).resolve('typescript/bin/tsc');
  } catch {
    throw new UsageError(`${entry} is missing or older than the source, and TypeScript is not installed to build it: run npm run build`);
  }
  log('building dist/ for the browser (npm run build) …');
  const r = spawnSync(process.execPath, [tsc, '-p', join(root, 'tsconfig.build.json')], { stdio: 'inherit' });
  if (r.status !== 0) throw new Error('npm run build failed');
}
