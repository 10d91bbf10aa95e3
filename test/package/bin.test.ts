// bin/difrep.js runs the built JavaScript in an installed package and the TypeScript source in a
// checkout: a checkout's dist/ (npm run build, the example page) goes stale as src/ changes, and the
// bin ran it whenever it existed, so fixes pulled into src/ went unused through `difrep`.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('../../', import.meta.url));

t.test('the bin runs src/ in a checkout (even with a dist/) and dist/ in a package', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'difrep-bin-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  for (const sub of ['bin', 'dist/src/cli', 'src/cli']) mkdirSync(join(dir, sub), { recursive: true });
  copyFileSync(join(root, 'bin/difrep.js'), join(dir, 'bin/difrep.js'));
  symlinkSync(join(root, 'node_modules'), join(dir, 'node_modules'));
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ type: 'module' }));
  writeFileSync(join(dir, 'dist/src/cli/main.js'), "console.log('built');\n");
  writeFileSync(join(dir, 'src/cli/main.ts'), "const from: string = 'source';\nconsole.log(from);\n");
  const run = () => spawnSync(process.execPath, [join(dir, 'bin/difrep.js')], { encoding: 'utf8' }).stdout.trim();
  t.equal(run(), 'built', 'a package (no tsconfig.build.json): dist/');
  writeFileSync(join(dir, 'tsconfig.build.json'), '{}');
  t.equal(run(), 'source', 'a checkout: src/ through tsx');
});

// In a checkout the bin ran the source as a child (spawnSync, no signal forwarding): a SIGTERM to
// `difrep` (systemd's, a container's PID 1) stopped only the wrapper, and the orphaned run kept
// training into --out and holding its locks.
t.test('in a checkout the source runs in the bin\'s own process, so a SIGTERM to difrep stops the run', async (t) => {
  const { spawn } = await import('node:child_process');
  const { existsSync, readFileSync } = await import('node:fs');
  const dir = mkdtempSync(join(tmpdir(), 'difrep-bin-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  for (const sub of ['bin', 'src/cli']) mkdirSync(join(dir, sub), { recursive: true });
  copyFileSync(join(root, 'bin/difrep.js'), join(dir, 'bin/difrep.js'));
  symlinkSync(join(root, 'node_modules'), join(dir, 'node_modules'));
  writeFileSync(join(dir, 'package.json'), JSON.stringify({ type: 'module' }));
  writeFileSync(join(dir, 'tsconfig.build.json'), '{}');
  // A long run: writes its pid, then works until stopped.
  writeFileSync(join(dir, 'src/cli/main.ts'), `import { writeFileSync } from 'node:fs';\nconst pid: number = process.pid;\nwriteFileSync(${JSON.stringify(join(dir, 'pid'))}, String(pid));\nsetInterval(() => {}, 1000);\n`);
  const child = spawn(process.execPath, [join(dir, 'bin/difrep.js')], { stdio: 'ignore' });
  const exited = new Promise<NodeJS.Signals | null>((r) => child.once('exit', (_, signal) => r(signal)));
  while (!existsSync(join(dir, 'pid'))) await new Promise((r) => setTimeout(r, 50));
  await new Promise((r) => setTimeout(r, 100)); // the pid is written whole
  const runPid = Number(readFileSync(join(dir, 'pid'), 'utf8'));
  t.equal(runPid, child.pid, 'the run is the bin\'s process, not a child of it');
  child.kill('SIGTERM');
  t.equal(await exited, 'SIGTERM');
  const alive = (() => {
    try {
      process.kill(runPid, 0);
      return true;
    } catch {
      return false;
    }
  })();
  t.notOk(alive, 'nothing left running');
});
