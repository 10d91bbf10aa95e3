// The demo's options that only its later stages would reject are refused before the model loads
// (found by the heads, they ended minutes of sampling, extraction and sweeps).
import t from 'tap';
import { UsageError } from '../../src/cli/args.ts';
import { demoCommand } from '../../src/cli/demo.ts';

for (const [args, expected] of [
  [['--full', '--train-per-class', '50'], /--full uses all 60,000 training and 10,000 test images: leave out --train-per-class and --test-per-class/],
  [['--head-dim', '10'], /--head-dim 10 does not split into the heads' 4 attention heads: give a multiple of 4/],
  // 5 per class: 50 training images, 40 fit the sweeps' probes, 10 validate them.
  [['--train-per-class', '5', '--batch', '41'], /--batch 41 is more than the 40 images the sweeps fit their probes on \(80 % of 50 training images\): give --batch 40 or less/],
] as const) {
  t.test(args.join(' '), async (t) => {
    const err = await demoCommand([...args, '--out', '/nonexistent/demo']).then(() => null, (e: Error) => e);
    t.type(err, UsageError);
    t.match(err?.message, expected);
  });
}
