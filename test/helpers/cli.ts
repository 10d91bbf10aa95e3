// Runs the difrep CLI from the source (node + tsx) and returns its exit status and output.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export const repoRoot = fileURLToPath(new URL('../../', import.meta.url));

/**
 * Runs the CLI to its end or for `timeoutMs`; `timedOut` says the time ran out (the CLI then stops
 * on the SIGTERM it is sent, with its own exit status: 143 where it forwards the stop to Deno).
 */
export function runCli(args: string[], timeoutMs = 1_200_000): { status: number | null; timedOut: boolean; stdout: string; stderr: string } {
  const main = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url));
  const r = spawnSync(process.execPath, ['--import', 'tsx', main, ...args], { cwd: repoRoot, encoding: 'utf8', timeout: timeoutMs });
  const stderr = r.stderr.split('\n').filter((l) => !l.includes('artificially reduced')).join('\n');
  return { status: r.status, timedOut: (r.error as NodeJS.ErrnoException | undefined)?.code === 'ETIMEDOUT', stdout: r.stdout, stderr };
}

/** Debian's chromium (setup.sh --browser), or DIFREP_CHROMIUM; undefined when there is none. */
export function chromiumBinary(): string | undefined {
  return [process.env.DIFREP_CHROMIUM, '/usr/bin/chromium', '/usr/bin/chromium-browser'].find((c) => c && existsSync(c));
}
