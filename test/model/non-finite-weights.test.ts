// A weight that is NaN or ±Inf can only come from a corrupt (or diverged) checkpoint: loading it
// must stop with an error naming the file, the tensor and the first bad index, never load silently.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { CheckpointError, encodeSafetensors, openCheckpoint, openSafetensors, withPrefix } from '../../src/model/checkpoint/index.ts';
import { LinearProbe } from '../../src/model/heads/linear-probe.ts';
import { UNet } from '../../src/model/unet.ts';
import { flagsFromJson } from '../../src/model/unet-config.ts';
import { testEngine } from '../helpers/check.ts';
import { poke } from '../helpers/poke-safetensors.ts';

const fixture = (f: string) => new URL(`../fixtures/${f}`, import.meta.url).pathname;

t.test('a U-Net checkpoint holding NaN or Inf is refused, naming file, tensor and index', async (t) => {
  const e = await testEngine();
  const dir = await mkdtemp(join(tmpdir(), 'difrep-nonfinite-'));
  const bytes = await readFile(fixture('adm32-mini.safetensors'));
  const cases: [string, string, number, number, string][] = [
    ['nan.safetensors', 'input_blocks.0.0.bias', 3, NaN, 'tensor "input_blocks.0.0.bias" holds NaN at index 3: the checkpoint is corrupt'],
    ['inf.safetensors', 'out.2.weight', 0, Infinity, 'tensor "out.2.weight" holds Infinity at index 0: the checkpoint is corrupt'],
    ['neginf.safetensors', 'time_embed.0.weight', 17, -Infinity, 'tensor "time_embed.0.weight" holds -Infinity at index 17: the checkpoint is corrupt'],
  ];
  for (const [file, tensor, index, value, message] of cases) {
    const path = join(dir, file);
    await writeFile(path, poke(bytes, `param.${tensor}`, index, value));
    const src = await openCheckpoint(path);
    const err = await UNet.load(e, flagsFromJson(src.metadata.config), withPrefix(src, 'param.')).then(() => null, (x: Error) => x);
    await src.close();
    t.ok(err instanceof CheckpointError, `${file}: a CheckpointError`);
    t.match(err?.message, message, `${file}: ${err?.message}`);
    t.ok(err?.message.startsWith(path), 'names the file');
  }
  await rm(dir, { recursive: true });
});

t.test('a head checkpoint holding NaN is refused too (loadStateDict)', async (t) => {
  const e = await testEngine();
  // A linear probe on 1 channel, pool 2, 2 classes: weight [2, 4], bias [2]; bias[1] is NaN.
  const bytes = encodeSafetensors({ weight: { shape: [2, 4], data: new Float32Array(8) }, bias: { shape: [2], data: Float32Array.from([0.5, NaN]) } });
  const src = await openSafetensors(bytes);
  const err = await LinearProbe.load(e, { channels: 1, classes: 2 }, src).then(() => null, (x: Error) => x);
  t.ok(err instanceof CheckpointError);
  t.match(err?.message, '<memory>: tensor "bias" holds NaN at index 1: the checkpoint is corrupt');
});

// A float64 of 1e300 is finite, and reads as Infinity in float32: "holds Infinity" named no cause.
t.test('a float64 weight beyond float32\'s range is refused saying so', async (t) => {
  const e = await testEngine();
  const header = new TextEncoder().encode(JSON.stringify({
    weight: { dtype: 'F32', shape: [2, 4], data_offsets: [0, 32] },
    bias: { dtype: 'F64', shape: [2], data_offsets: [32, 48] },
  }));
  const bytes = new Uint8Array(8 + header.length + 48);
  const view = new DataView(bytes.buffer);
  view.setBigUint64(0, BigInt(header.length), true);
  bytes.set(header, 8);
  view.setFloat64(8 + header.length + 32, 0.5, true);
  view.setFloat64(8 + header.length + 40, -1e300, true);
  const err = await LinearProbe.load(e, { channels: 1, classes: 2 }, await openSafetensors(bytes)).then(() => null, (x: Error) => x);
  t.ok(err instanceof CheckpointError);
  t.match(err?.message, '<memory>: tensor "bias" holds -Infinity as float32 (its float64 value is infinite or beyond float32\'s range, ±3.4e38) at index 1');
});
