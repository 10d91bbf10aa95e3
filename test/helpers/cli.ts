// Runs the difrep CLI from the source (node + tsx) and returns its exit status and output.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export const repoRoot = fileURLToPath(new URL('../../', import.meta.url));

export function runCli(args: string[], timeoutMs = 1_200_000): { status: number | null; stdout: string; stderr: string } {
  const main = fileURLToPath(new URL('../../src/cli/main.ts', import.meta.url));
  const r = spawnSync(process.execPath, ['--import', 'tsx', main, ...args], { cwd: repoRoot, encoding: 'utf8', timeout: timeoutMs });
  const stderr = r.stderr.split('\n').filter((l) => !l.includes('artificially reduced')).join('\n');
  return { status: r.status, stdout: r.stdout, stderr };
}

/** Debian's chromium (setup.sh --browser), or DIFREP_CHROMIUM; undefined when there is none. */
export function chromiumBinary(): string | undefined {
  return [process.env.DIFREP_CHROMIUM, '/usr/bin/chromium', '/usr/bin/chromium-browser'].find((c) => c && existsSync(c));
}
