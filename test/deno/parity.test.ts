// `difrep parity --runtime deno` on every U-Net dump of test/fixtures: the same TypeScript source
// under Deno's WebGPU reproduces PyTorch at every block and gradient.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { repoRoot, runCli } from '../helpers/cli.ts';

const DUMPS = ['adm32-mini.safetensors', 'adm64.safetensors', 'unseen-config.safetensors', 'conv-resample.safetensors'];

// A run takes 10–20 s. Once in a fresh-clone CI run (2 cores, other test files alongside) Deno's
// process stalled past tap's 10 minutes, and alone the same command passed in 12 s: an attempt
// that exceeds 4 minutes is stopped (Deno too: the CLI's spawnSync leaves it orphaned) and retried
// once, with a comment; a second stall, a failure or a wrong tensor still fails the test.
const ATTEMPT_MS = 240_000;
const args = ['parity', '--runtime', 'deno', ...DUMPS.map((d) => `test/fixtures/${d}`)];
const killOrphanedDeno = () => spawnSync('pkill', ['-f', `deno run .*${join(repoRoot, 'src', 'cli', 'main.ts')} parity`]);

t.test(`parity --runtime deno: ${DUMPS.join(', ')}`, async (t) => {
  let r = runCli(args, ATTEMPT_MS);
  if (r.status === null) {
    killOrphanedDeno();
    t.comment(`the first attempt stalled past ${ATTEMPT_MS / 1000} s; retrying once`);
    r = runCli(args, ATTEMPT_MS);
    if (r.status === null) killOrphanedDeno();
  }
  t.comment(r.stdout.split('\n').filter((l) => /runtime|adapter|PASS|FAIL/.test(l)).join('\n'));
  t.equal(r.status, 0, `exit status (stderr: ${r.stderr.slice(-2000)})`);
  t.match(r.stdout, /runtime: Deno/);
  for (const d of DUMPS) t.match(r.stdout, new RegExp(`${d.replace('.', '\\.')}\\n(.*\\n)*?  PASS: \\d+/\\d+ tensors`), `${d} passes under Deno`);
  t.notMatch(r.stdout, /FAIL/, 'no tensor out of tolerance');
});
