// A seeded fuzz pass over the checkpoint readers (safetensors; PyTorch zip, legacy and f16 .pt):
// every corrupted fixture either loads with every tensor readable and of the length its shape
// says, or fails with a CheckpointError — never another exception, a hang or a crash. The cases
// run in a child process (test/helpers/checkpoint-fuzz-runner.ts) so that a hang can be stopped
// and a crash observed; each case must finish within CASE_TIMEOUT_MS.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import t from 'tap';

const SEED = 20240601;
const CASES_PER_FIXTURE = 80;
const CASE_TIMEOUT_MS = 10_000;
/** Resident memory the child may reach: the fixtures are at most 7.4 MB, so only a length field believed blindly gets near it. */
const MAX_RSS_MB = 1024;

interface Line {
  start?: number;
  case?: string;
  end?: number;
  outcome?: 'loaded' | 'CheckpointError' | 'other';
  error?: string;
  done?: number;
  maxRssMB?: number;
}

t.test(`${4 * CASES_PER_FIXTURE} corrupted checkpoints (seed ${SEED}): a load or a CheckpointError, never anything else`, async (t) => {
  const runner = fileURLToPath(new URL('../helpers/checkpoint-fuzz-runner.ts', import.meta.url));
  const child = spawn(process.execPath, ['--import', 'tsx', '--max-old-space-size=512', runner, String(SEED), String(CASES_PER_FIXTURE)], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const names = new Map<number, string>();
  const outcomes = { loaded: 0, CheckpointError: 0, other: 0 };
  let current: Line | undefined;
  let hung: string | undefined;
  let done: Line | undefined;
  let timer: NodeJS.Timeout | undefined;
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code, signal) => resolve(signal ? null : code)));
  for await (const text of createInterface({ input: child.stdout })) {
    const line = JSON.parse(text) as Line;
    clearTimeout(timer);
    if (line.start !== undefined) {
      current = line;
      names.set(line.start, line.case!);
      timer = setTimeout(() => {
        hung = `case ${line.start} (${line.case}) did not finish within ${CASE_TIMEOUT_MS} ms`;
        child.kill('SIGKILL');
      }, CASE_TIMEOUT_MS);
    } else if (line.end !== undefined) {
      outcomes[line.outcome!]++;
      if (line.outcome === 'other') t.fail(`case ${line.end} (${names.get(line.end)}): ${line.error}`);
      current = undefined;
    } else if (line.done !== undefined) {
      done = line;
    }
  }
  clearTimeout(timer);
  const code = await exited;
  t.equal(hung, undefined, 'no case hangs');
  t.equal(code, 0, `the runner exits normally${current ? `; it died during case ${current.start} (${current.case})` : ''}\n${stderr.slice(-2000)}`);
  t.equal(done?.done, 4 * CASES_PER_FIXTURE, 'every case ran');
  t.equal(outcomes.other, 0, `outcomes: ${JSON.stringify(outcomes)}`);
  // The pass must exercise both sides: corruptions that are refused and ones (in tensor data) that load.
  t.ok(outcomes.CheckpointError > CASES_PER_FIXTURE, 'many corruptions are refused');
  t.ok(outcomes.loaded > 0, 'some corruptions (inside tensor data) load');
  t.ok((done?.maxRssMB ?? Infinity) < MAX_RSS_MB, `peak memory ${done?.maxRssMB} MB: no allocation sized by a corrupted field`);
});
