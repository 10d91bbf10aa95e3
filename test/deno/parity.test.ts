// `difrep parity --runtime deno` on every U-Net dump of test/fixtures: the same TypeScript source
// under Deno's WebGPU reproduces PyTorch at every block and gradient.
import t from 'tap';
import { runCli } from '../helpers/cli.ts';

const DUMPS = ['adm32-mini.safetensors', 'adm64.safetensors', 'unseen-config.safetensors', 'conv-resample.safetensors'];

t.test(`parity --runtime deno: ${DUMPS.join(', ')}`, async (t) => {
  const r = runCli(['parity', '--runtime', 'deno', ...DUMPS.map((d) => `test/fixtures/${d}`)]);
  t.comment(r.stdout.split('\n').filter((l) => /runtime|adapter|PASS|FAIL/.test(l)).join('\n'));
  t.equal(r.status, 0, `exit status (stderr: ${r.stderr.slice(-2000)})`);
  t.match(r.stdout, /runtime: Deno/);
  for (const d of DUMPS) t.match(r.stdout, new RegExp(`${d.replace('.', '\\.')}\\n(.*\\n)*?  PASS: \\d+/\\d+ tensors`), `${d} passes under Deno`);
  t.notMatch(r.stdout, /FAIL/, 'no tensor out of tolerance');
});
