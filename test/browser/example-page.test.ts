// The browser example page in headless Chromium: it loads the shipped model, runs one extraction
// on the bundled Fashion-MNIST samples, logs no console error, and a screenshot is saved.
import t from 'tap';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadFashionMnist, toModelInput } from '../../src/train/data/fashion-mnist.ts';
import { chromiumBinary, runCli } from '../helpers/cli.ts';

t.test('example page: loads, extracts, no console errors, screenshot', { skip: chromiumBinary() ? false : 'no Chromium: bash scripts/setup.sh --browser' }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'difrep-example-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const shot = join(dir, 'example.png');
  const r = runCli(['example', '--screenshot', shot]);
  t.equal(r.status, 0, `exit status (stderr: ${r.stderr.slice(-2000)})`);
  const timing = /extraction: ([\d.]+) ms per image \(first run: compiling the kernels included; run again for the steady time\) \((\d+) images, block (\d+), t = 150\)/.exec(r.stdout);
  t.ok(timing, 'the page ran one extraction and reported its time per image, saying the first run compiles');
  // The samples' model input is the CLI's for those Fashion-MNIST test images (the page resized them
  // with the canvas, 8-bit, up to 24 grey levels off).
  const meta = JSON.parse(readFileSync(new URL('../../examples/browser/samples.json', import.meta.url), 'utf8')) as { images: { index: number }[] };
  const x0 = toModelInput(await loadFashionMnist('test'), meta.images.map((m) => m.index), 16);
  const inputs = /inputs: (\d+) images, Σx0 (-?[\d.]+), Σx0² ([\d.]+)/.exec(r.stdout);
  t.ok(inputs, 'the page reported its inputs');
  if (inputs) {
    t.equal(Number(inputs[1]), meta.images.length);
    t.ok(Math.abs(Number(inputs[2]) - x0.reduce((a, v) => a + v, 0)) < 1e-3, `Σx0 ${inputs[2]} (CLI ${x0.reduce((a, v) => a + v, 0).toFixed(6)})`);
    t.ok(Math.abs(Number(inputs[3]) - x0.reduce((a, v) => a + v * v, 0)) < 1e-3, `Σx0² ${inputs[3]} (CLI ${x0.reduce((a, v) => a + v * v, 0).toFixed(6)})`);
  }
  if (timing) t.comment(`Chromium (SwiftShader): ${timing[1]} ms per image, ${timing[2]} images, block ${timing[3]}`);
  t.notMatch(r.stderr, /page error/, 'no console errors or uncaught exceptions');
  t.ok(existsSync(shot), 'screenshot saved');
  const png = readFileSync(shot);
  t.same([...png.subarray(1, 4)], [0x50, 0x4e, 0x47], 'it is a PNG');
  t.ok(png.byteLength > 20_000, `and not blank (${png.byteLength} bytes)`);
});
