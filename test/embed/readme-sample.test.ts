// The README's embedding sample, run exactly as written there (with 'difrep' resolved to this
// checkout's source): a sample that stops working fails this test.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const root = new URL('../../', import.meta.url);
const readme = readFileSync(new URL('README.md', root), 'utf8');
const match = /<!-- readme-sample:embed -->\n```ts\n([\s\S]*?)```/.exec(readme);

t.test('README: "Embed it in your WebGPU app" runs and prints its features', async (t) => {
  t.ok(match, 'the README has the marked sample');
  const code = match![1].replace(`from 'difrep'`, `from '${fileURLToPath(new URL('src/index.ts', root))}'`);
  const file = fileURLToPath(new URL('test/embed/readme-sample.generated.ts', root));
  writeFileSync(file, code);
  try {
    const r = spawnSync(process.execPath, ['--import', 'tsx', file], { cwd: fileURLToPath(root), encoding: 'utf8', timeout: 120_000 });
    t.equal(r.status, 0, `exit status (stderr: ${r.stderr.split('\n').filter((l) => !l.includes('maxDynamic')).join('\n')})`);
    t.match(r.stdout, /features \[2,64,16,16\] in a 131072-byte GPUBuffer "difrep output /, 'features of block 5 come back as a GPUBuffer the app owns');
    const mean = Number(/mean feature (-?[\d.]+)/.exec(r.stdout)?.[1]);
    t.ok(Number.isFinite(mean) && mean !== 0, `the app reads real values back after dispose (mean ${mean})`);
    t.notMatch(r.stderr, /my app:/, 'no uncaptured errors on the app device');
  } finally {
    rmSync(file, { force: true });
  }
});

// It read navigator.gpu, which Node does not have: run as written it failed with a ReferenceError.
// Expected, by hand: [[1, 2, 3], [4, 5, 6]] · [[0.5, −1], [2, 0], [1, 3]] = [[7.5, 8], [18, 14]], and
// the gradient of its sum with respect to a is each row of b summed: [−0.5, 2, 4] in both rows.
t.test('README: "Use it as a library" runs in Node and prints the product and its gradient', async (t) => {
  const sample = /<!-- readme-sample:library -->\n```ts\n([\s\S]*?)```/.exec(readme);
  t.ok(sample, 'the README has the marked sample');
  const code = sample![1].replace(`from './src/index.ts'`, `from '${fileURLToPath(new URL('src/index.ts', root))}'`);
  const file = fileURLToPath(new URL('test/embed/readme-library.generated.ts', root));
  writeFileSync(file, code);
  try {
    const r = spawnSync(process.execPath, ['--import', 'tsx', file], { cwd: fileURLToPath(root), encoding: 'utf8', timeout: 120_000 });
    t.equal(r.status, 0, `exit status (stderr: ${r.stderr.split('\n').filter((l) => !l.includes('maxDynamic')).join('\n')})`);
    t.match(r.stdout, /Float32Array\(4\) \[ 7\.5, 8, 18, 14 \] Float32Array\(6\) \[ -0\.5, 2, 4, -0\.5, 2, 4 \]/);
  } finally {
    rmSync(file, { force: true });
  }
});
