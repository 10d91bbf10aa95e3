// The published package: `npm pack` (which builds dist/ first), installed into a fresh project,
// imported by name from plain JavaScript and type-checked from TypeScript, its CLI run.
import t from 'tap';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ensureBuilt } from '../../src/cli/chromium.ts';

const root = fileURLToPath(new URL('../../', import.meta.url));
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';

t.test('npm pack → npm install in a fresh project → import, types, CLI', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'difrep-pack-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  // dist/ is built once before the suite (npm's pretest) and shared with the browser tests, so
  // pack without its prepack rebuild, which would rewrite files another test may be serving.
  ensureBuilt(root, (l) => t.comment(l));
  execFileSync(npm, ['pack', '--ignore-scripts', '--pack-destination', dir], { cwd: root, stdio: ['ignore', 'ignore', 'inherit'] });
  const tarball = readdirSync(dir).find((f) => f.endsWith('.tgz'));
  t.ok(tarball, 'npm pack made a tarball');
  const app = join(dir, 'app');
  execFileSync('mkdir', [app]);
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
  execFileSync(npm, ['install', '--no-audit', '--no-fund', '--prefer-offline', '--loglevel=error', join(dir, tarball!)], { cwd: app, stdio: ['ignore', 'ignore', 'inherit'] });

  // Plain JavaScript, the package by name: a matmul and its gradient, checked by hand.
  writeFileSync(join(app, 'use.mjs'), `
import { createEngine, ops } from 'difrep';
const engine = await createEngine();
const a = engine.tensor([1, 2, 3, 4], [2, 2]);
a.requiresGrad = true;
const c = ops.matmul(a, engine.tensor([5, 6, 7, 8], [2, 2]));
engine.tape.backward(ops.sum(c));
console.log(JSON.stringify({ c: Array.from(await c.read()), grad: Array.from(await a.grad.read()) }));
await engine.dispose();
`);
  const run = spawnSync(process.execPath, ['use.mjs'], { cwd: app, encoding: 'utf8' });
  t.equal(run.status, 0, `node use.mjs (stderr: ${run.stderr})`);
  const out = JSON.parse(run.stdout.trim().split('\n').at(-1)!);
  t.same(out.c, [19, 22, 43, 50], 'matmul through the installed package');
  t.same(out.grad, [11, 15, 11, 15], 'its gradient (row sums of B)');

  // TypeScript against the shipped declarations.
  writeFileSync(join(app, 'use.ts'), `
import { createEngine, type Engine, UNet } from 'difrep';
const engine: Engine = await createEngine();
const unet: UNet = UNet.random(engine, { image_size: 32, num_channels: 32, num_res_blocks: 1, channel_mult: '1,2', attention_resolutions: '2' });
const n: number = unet.plan.blocks.length;
// @ts-expect-error: the declarations know fromBuffer's signature
engine.fromBuffer('not a buffer');
export { n };
`);
  const tsc = spawnSync(process.execPath, [join(root, 'node_modules/typescript/bin/tsc'), '--noEmit', '--strict', '--skipLibCheck', '--target', 'es2022', '--module', 'nodenext', '--moduleResolution', 'nodenext', '--types', '@webgpu/types', 'use.ts'], { cwd: app, encoding: 'utf8' });
  t.equal(tsc.status, 0, `tsc on the installed declarations: ${tsc.stdout}`);

  const cli = spawnSync(join(app, 'node_modules/.bin/difrep'), ['--help'], { cwd: app, encoding: 'utf8' });
  t.equal(cli.status, 0, `the installed difrep CLI (stderr: ${cli.stderr})`);
  t.match(cli.stdout, /parity/, 'its help lists the commands');

  // Deno imports the installed package by name too (it strips no TypeScript under node_modules, so
  // it must resolve to the built JavaScript; a "deno" export condition pointed it at src/index.ts).
  const deno = spawnSync(join(root, 'node_modules/.bin/deno'), ['run', '--quiet', '--unstable-webgpu', '--allow-read', '--allow-env', '--allow-sys', 'use.mjs'], { cwd: app, encoding: 'utf8' });
  t.equal(deno.status, 0, `deno run use.mjs (stderr: ${deno.stderr})`);
  t.same(JSON.parse(deno.stdout.trim().split('\n').at(-1) ?? '{}'), out, 'the same matmul and gradient under Deno');
  // The example page and the browser parity run from the installed package: it comes built (npm
  // unpacks its sources after dist/, so they look newer: that is no reason to rebuild), with the page.
  const installed = join(app, 'node_modules', 'difrep');
  t.doesNotThrow(() => ensureBuilt(installed, (l) => t.fail(`tried to rebuild: ${l}`)));
  t.ok(existsSync(join(installed, 'examples', 'browser', 'index.html')), 'the example page is in the package');
});
