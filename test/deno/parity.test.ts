// `difrep parity --runtime deno` on every U-Net dump of test/fixtures: the same TypeScript source
// under Deno's WebGPU reproduces PyTorch at every block and gradient.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { repoRoot, runCli } from '../helpers/cli.ts';

const DUMPS = ['adm32-mini.safetensors', 'adm64.safetensors', 'unseen-config.safetensors', 'conv-resample.safetensors'];

// A run takes 10–20 s. Once in a fresh-clone CI run (2 cores, other test files alongside) Deno's
// process stalled past tap's 10 minutes, and alone the same command passed in 12 s: an attempt
// that exceeds 4 minutes is stopped (Deno too, should the forwarded stop not reach it) and retried
// once, with a comment; a second stall, a failure or a wrong tensor still fails the test. A stall is
// the time running out, whatever status the CLI then exits with (it forwards the stop to Deno and
// exits 143, so a test of `status === null` missed it and failed a fresh-clone CI run at 4 minutes).
const ATTEMPT_MS = 240_000;
const args = ['parity', '--runtime', 'deno', ...DUMPS.map((d) => `test/fixtures/${d}`)];
const killOrphanedDeno = () => spawnSync('pkill', ['-f', `deno run .*${join(repoRoot, 'src', 'cli', 'main.ts')} parity`]);

t.test(`parity --runtime deno: ${DUMPS.join(', ')}`, async (t) => {
  let r = runCli(args, ATTEMPT_MS);
  if (r.timedOut) {
    killOrphanedDeno();
    t.comment(`the first attempt stalled past ${ATTEMPT_MS / 1000} s; retrying once`);
    r = runCli(args, ATTEMPT_MS);
    if (r.timedOut) killOrphanedDeno();
  }
  t.comment(r.stdout.split('\n').filter((l) => /runtime|adapter|PASS|FAIL/.test(l)).join('\n'));
  t.equal(r.status, 0, `exit status (stderr: ${r.stderr.slice(-2000)})`);
  t.match(r.stdout, /runtime: Deno/);
  for (const d of DUMPS) t.match(r.stdout, new RegExp(`${d.replace('.', '\\.')}\\n(.*\\n)*?  PASS: \\d+/\\d+ tensors`), `${d} passes under Deno`);
  t.notMatch(r.stdout, /FAIL/, 'no tensor out of tolerance');
});

// The CLI ran Deno by spawnSync, which forwards no signal: a SIGTERM to difrep (a scheduler's stop)
// ended it and left Deno running on, orphaned.
t.test('a SIGTERM to `parity --runtime deno` stops Deno too', async (t) => {
  const { spawn } = await import('node:child_process');
  const main = join(repoRoot, 'src', 'cli', 'main.ts');
  const fixture = join(repoRoot, 'test', 'fixtures', 'adm64.safetensors');
  // The dump 40 times over: a run of a minute or more, which a stop must cut short.
  const child = spawn(process.execPath, ['--import', 'tsx', main, 'parity', '--runtime', 'deno', ...new Array(40).fill(fixture)], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'ignore'] });
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const denoRunning = () => spawnSync('pgrep', ['-f', `deno run .*parity ${fixture}`]).status === 0;
  // Until Deno has started (its own process, found by its command line), at most 60 s.
  for (let waited = 0; !denoRunning() && waited < 60_000; waited += 100) await new Promise((r) => setTimeout(r, 100));
  t.ok(denoRunning(), 'Deno started');
  child.kill('SIGTERM');
  await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
  for (let waited = 0; denoRunning() && waited < 3000; waited += 100) await new Promise((r) => setTimeout(r, 100));
  t.notOk(denoRunning(), 'no Deno left running');
  spawnSync('pkill', ['-f', `deno run .*parity ${fixture}`]);
  child.kill('SIGKILL');
});
