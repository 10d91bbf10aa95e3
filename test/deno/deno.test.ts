import { execFileSync } from 'node:child_process';
import t from 'tap';

// The same source under Deno's WebGPU (the npm `deno` package, `--unstable-webgpu`).
t.test('one matmul and its gradient run under Deno from the same TypeScript source', async (t) => {
  const script = new URL('./smoke.ts', import.meta.url).pathname;
  const deno = new URL('../../node_modules/.bin/deno', import.meta.url).pathname;
  const out = execFileSync(deno, ['run', '--quiet', '--unstable-webgpu', '--allow-read', '--allow-env', script], { encoding: 'utf8' });
  const r = JSON.parse(out.trim().split('\n').pop()!);
  t.comment(`Deno adapter: ${r.adapter}`);
  // [[1,2,3],[4,5,6]] · [[0.5,-1],[2,0],[1,3]] by hand; d Σ(AB) / dA = row sums of B.
  t.same(r.matmul, [7.5, 8, 18, 14]);
  t.same(r.gradA, [-0.5, 2, 4, -0.5, 2, 4]);
});
