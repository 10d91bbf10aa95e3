// Every TypeScript file of the project (src, kernels, test, bench, scripts: tsconfig.json's include)
// type-checks. The tests run through a transpiler that checks no types, so a test that wrote into a
// readonly array ran green while `tsc --noEmit` failed on it.
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import t from 'tap';
import { repoRoot } from '../helpers/cli.ts';

t.test('tsc --noEmit reports no error', async (t) => {
  const tsc = join(repoRoot, 'node_modules', 'typescript', 'bin', 'tsc');
  const r = spawnSync(process.execPath, [tsc, '--noEmit', '-p', repoRoot], { encoding: 'utf8' });
  t.equal(r.status, 0, r.stdout.slice(0, 4000) || r.stderr.slice(0, 4000));
});
