// The README's code samples, run exactly as written there (with their import resolved to this
// checkout's source): a sample that stops working fails this test.
import t from 'tap';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const root = new URL('../../', import.meta.url);
const readme = readFileSync(new URL('README.md', root), 'utf8');

/**
 * Runs the README's code block marked `<!-- readme-sample:NAME -->` as written, its import of
 * `from` resolved to this checkout's source; undefined when the README has no such block.
 */
function runSample(name: string, from: string): SpawnSyncReturns<string> | undefined {
  const sample = new RegExp(`<!-- readme-sample:${name} -->\\n\`\`\`ts\\n([\\s\\S]*?)\`\`\``).exec(readme);
  if (!sample) return undefined;
  const file = fileURLToPath(new URL(`test/embed/readme-${name}.generated.ts`, root));
  writeFileSync(file, sample[1].replace(`from '${from}'`, `from '${fileURLToPath(new URL('src/index.ts', root))}'`));
  try {
    return spawnSync(process.execPath, ['--import', 'tsx', file], { cwd: fileURLToPath(root), encoding: 'utf8', timeout: 120_000 });
  } finally {
    rmSync(file, { force: true });
  }
}
const stderrOf = (r: { stderr: string }) => r.stderr.split('\n').filter((l) => !l.includes('maxDynamic')).join('\n');

t.test('README: "Embed it in your WebGPU app" runs and prints its features', async (t) => {
  const r = runSample('embed', 'difrep');
  t.ok(r, 'the README has the marked sample');
  t.equal(r!.status, 0, `exit status (stderr: ${stderrOf(r!)})`);
  t.match(r!.stdout, /features \[2,64,16,16\] in a 131072-byte GPUBuffer "difrep output /, 'features of block 5 come back as a GPUBuffer the app owns');
  const mean = Number(/mean feature (-?[\d.]+)/.exec(r!.stdout)?.[1]);
  t.ok(Number.isFinite(mean) && mean !== 0, `the app reads real values back after dispose (mean ${mean})`);
  t.notMatch(r!.stderr, /my app:/, 'no uncaptured errors on the app device');
});

// It read navigator.gpu, which Node does not have: run as written it failed with a ReferenceError.
// Expected, by hand: [[1, 2, 3], [4, 5, 6]] · [[0.5, −1], [2, 0], [1, 3]] = [[7.5, 8], [18, 14]], and
// the gradient of its sum with respect to a is each row of b summed: [−0.5, 2, 4] in both rows.
t.test('README: "Use it as a library" runs in Node and prints the product and its gradient', async (t) => {
  const r = runSample('library', './src/index.ts');
  t.ok(r, 'the README has the marked sample');
  t.equal(r!.status, 0, `exit status (stderr: ${stderrOf(r!)})`);
  t.match(r!.stdout, /Float32Array\(4\) \[ 7\.5, 8, 18, 14 \] Float32Array\(6\) \[ -0\.5, 2, 4, -0\.5, 2, 4 \]/);
});
