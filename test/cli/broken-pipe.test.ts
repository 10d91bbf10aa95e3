// Output piped into a reader that stopped (`difrep … | head -1`) ended in Node's unhandled 'error'
// event: a stack trace of "write EPIPE" on stderr, exit 1.
import { spawn } from 'node:child_process';
import t from 'tap';
import { repoRoot } from '../helpers/cli.ts';

t.test('a closed output pipe stops the run as a stop signal does, without a stack trace', async (t) => {
  const fixture = 'test/fixtures/adm32-mini.safetensors';
  const child = spawn(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'parity', fixture, fixture, fixture], { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  // Read the first line, then close the pipe, as head -1 does.
  await new Promise<void>((r) => child.stdout.once('data', () => r()));
  child.stdout.destroy();
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((r) => child.once('exit', (c, s) => r([c, s])));
  t.same([code, signal], [null, 'SIGTERM'], 'ended by SIGTERM (lock-holding commands release their locks on it)');
  t.notMatch(stderr, /Unhandled 'error' event|EPIPE|\n\s+at /, 'no stack trace');
});
