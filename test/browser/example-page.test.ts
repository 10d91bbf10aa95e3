// The browser example page in headless Chromium: it loads the shipped model, runs one extraction
// on the bundled Fashion-MNIST samples, logs no console error, and a screenshot is saved.
import t from 'tap';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromiumBinary, runCli } from '../helpers/cli.ts';

t.test('example page: loads, extracts, no console errors, screenshot', { skip: chromiumBinary() ? false : 'no Chromium: bash scripts/setup.sh --browser' }, async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'difrep-example-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const shot = join(dir, 'example.png');
  const r = runCli(['example', '--screenshot', shot]);
  t.equal(r.status, 0, `exit status (stderr: ${r.stderr.slice(-2000)})`);
  const timing = /extraction: ([\d.]+) ms per image \((\d+) images, block (\d+), t = 150\)/.exec(r.stdout);
  t.ok(timing, 'the page ran one extraction and reported its time per image');
  if (timing) t.comment(`Chromium (SwiftShader): ${timing[1]} ms per image, ${timing[2]} images, block ${timing[3]}`);
  t.notMatch(r.stderr, /page error/, 'no console errors or uncaught exceptions');
  t.ok(existsSync(shot), 'screenshot saved');
  const png = readFileSync(shot);
  t.same([...png.subarray(1, 4)], [0x50, 0x4e, 0x47], 'it is a PNG');
  t.ok(png.byteLength > 20_000, `and not blank (${png.byteLength} bytes)`);
});
