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
