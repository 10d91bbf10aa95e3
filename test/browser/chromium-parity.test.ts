// `difrep parity --runtime chromium` on every U-Net dump of test/fixtures, inside a headless
// Chromium page on Chrome's SwiftShader: a second, independent Vulkan implementation, so kernels
// that are right only by lavapipe's luck fail here.
import t from 'tap';
import { chromiumBinary, runCli } from '../helpers/cli.ts';

const DUMPS = ['adm32-mini.safetensors', 'adm64.safetensors', 'unseen-config.safetensors', 'conv-resample.safetensors'];

t.test(`parity --runtime chromium: ${DUMPS.join(', ')}`, { skip: chromiumBinary() ? false : 'no Chromium: bash scripts/setup.sh --browser' }, async (t) => {
  const r = runCli(['parity', '--runtime', 'chromium', ...DUMPS.map((d) => `test/fixtures/${d}`)]);
  t.comment(r.stdout.split('\n').filter((l) => /runtime|adapter|PASS|FAIL/.test(l)).join('\n'));
  t.equal(r.status, 0, `exit status (stderr: ${r.stderr.slice(-2000)})`);
  t.match(r.stdout, /runtime: Chrome\/[\d.]+ \(headless\)/, 'ran in headless Chromium');
  t.match(r.stdout, /adapter: .*swiftshader/i, 'on the SwiftShader adapter');
  for (const d of DUMPS) t.match(r.stdout, new RegExp(`${d.replace('.', '\\.')}\\n(.*\\n)*?  PASS: \\d+/\\d+ tensors`), `${d} passes in Chromium`);
  t.notMatch(r.stdout, /FAIL/, 'no tensor out of tolerance');
  t.notMatch(r.stderr, /page error/, 'no page errors');
});

t.test('a page whose module cannot load ends with exit 2 and its error, not a wait without end', { timeout: 120_000, skip: chromiumBinary() ? false : 'no Chromium: bash scripts/setup.sh --browser' }, async (t) => {
  const { launchChromium, runPage } = await import('../../src/cli/chromium.ts');
  const { startStaticServer } = await import('../../src/cli/static-server.ts');
  const pages = {
    '/bare.html': '<!doctype html><script type="module">import "no-such-package"; globalThis.difrepExit = 0;</script>',
    '/missing.html': '<!doctype html><script type="module" src="/missing.js"></script>',
    '/throws.html': '<!doctype html><script type="module">throw new Error("boom");</script>',
  };
  const server = await startStaticServer({ pages });
  const browser = await launchChromium();
  try {
    for (const [path, error] of [['/bare.html', /module specifier/], ['/missing.html', /cannot load .*missing\.js: HTTP 404/], ['/throws.html', /uncaught: boom/]] as const) {
      const run = await runPage(browser, `${server.url}${path}`, () => {});
      t.equal(run.exit, 2, `${path}: exit 2`);
      t.match(run.errors.join('\n'), error);
    }
  } finally {
    await browser.close();
    await server.close();
  }
});
