// safetensors headers that the format's reference parser (huggingface/safetensors) rejects must be
// refused here too, each with a CheckpointError naming the file, the tensor and the numbers.
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { CheckpointError, openCheckpoint, openSafetensors } from '../../src/model/checkpoint/index.ts';

/** A safetensors file by hand: u64 LE header length, the header text, then `dataBytes` bytes (0, 1, 2, …). */
function file(header: unknown, dataBytes: number, headerText = JSON.stringify(header)): Uint8Array {
  const json = new TextEncoder().encode(headerText);
  const out = new Uint8Array(8 + json.length + dataBytes);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  for (let i = 0; i < dataBytes; i++) out[8 + json.length + i] = i;
  return out;
}

const f32 = (shape: number[], offsets: unknown) => ({ dtype: 'F32', shape, data_offsets: offsets });

async function loadAll(bytes: Uint8Array, name: string): Promise<unknown> {
  const dir = await mkdtemp(join(tmpdir(), 'difrep-st-valid-'));
  const path = join(dir, name);
  await writeFile(path, bytes);
  try {
    const src = await openSafetensors(path);
    for (const k of src.keys()) await src.read(k);
    await src.close();
    return null;
  } catch (e) {
    return e;
  } finally {
    await rm(dir, { recursive: true });
  }
}

t.test('malformed safetensors headers are CheckpointErrors naming the file, tensor and numbers', async (t) => {
  // Each: [file name, bytes, expected message]. Good layout: a = F32[2] at [0,8), b = F32[1] at [8,12).
  const cases: [string, Uint8Array, RegExp][] = [
    ['negative.safetensors', file({ a: f32([2], [-200, -72]), b: f32([1], [8, 12]) }, 12),
      /tensor "a" data_offsets \[-200,-72\] are not two non-negative integers/],
    ['overlap.safetensors', file({ a: f32([2], [0, 8]), b: f32([1], [4, 8]) }, 8),
      /tensor "b" data_offsets \[4,8\] overlap tensor "a", which ends at 8/],
    ['shifted.safetensors', file({ a: f32([2], [1, 9]), b: f32([1], [9, 13]) }, 13),
      /tensor "a" starts at byte 1 but the data section starts at 0: no tensor holds data bytes 0\.\.1/],
    ['gap.safetensors', file({ a: f32([2], [0, 8]), b: f32([1], [12, 16]) }, 16),
      /tensor "b" starts at byte 12 but tensor "a" ends at 8: no tensor holds data bytes 8\.\.12/],
    ['fractional.safetensors', file({ a: f32([2], [0, 7.5]), b: f32([1], [8, 12]) }, 12),
      /tensor "a" data_offsets \[0,7\.5\] are not two non-negative integers/],
    ['three-offsets.safetensors', file({ a: f32([2], [0, 8, 12]) }, 8), /tensor "a" data_offsets \[0,8,12\] are not two/],
    ['string-offsets.safetensors', file({ a: f32([2], ['0', '8']) }, 8), /tensor "a" data_offsets \["0","8"\] are not two/],
    ['reversed.safetensors', file({ a: f32([0], [8, 0]) }, 8), /tensor "a" data_offsets \[8,0\] end before they begin/],
    ['length.safetensors', file({ a: f32([3], [0, 8]) }, 8), /tensor "a" data_offsets \[0,8\] hold 8 bytes, but F32 \[3\] needs 12/],
    ['dtype.safetensors', file({ a: { dtype: 'F8_E4M3', shape: [2], data_offsets: [0, 2] } }, 2), /tensor "a": unsupported dtype "F8_E4M3" \(supported: F32, F16/],
    ['shape-negative.safetensors', file({ a: f32([-1, -2], [0, 8]) }, 8), /tensor "a" shape \[-1,-2\] is not a list of non-negative integers/],
    ['shape-fraction.safetensors', file({ a: f32([1.5], [0, 6]) }, 6), /tensor "a" shape \[1\.5\] is not a list of non-negative integers/],
    ['shape-huge.safetensors', file({ a: f32([2 ** 40, 2 ** 40], [0, 8]) }, 8), /tensor "a" shape \[\d+,\d+\] has more elements than can be addressed/],
    ['trailing.safetensors', file({ a: f32([2], [0, 8]), b: f32([1], [8, 12]) }, 16),
      /the tensors cover 12 bytes of data but the file has 16: no tensor holds data bytes 12\.\.16/],
    ['truncated.safetensors', file({ a: f32([2], [0, 8]), b: f32([1], [8, 12]) }, 10), /truncated: tensor "b" ends at byte \d+ but the file has \d+ bytes/],
    ['null.safetensors', file(null, 0), /the JSON is null, not an object of tensors/],
    ['array.safetensors', file([1, 2], 0), /the JSON is an array, not an object of tensors/],
    ['number.safetensors', file(7, 0), /the JSON is number, not an object of tensors/],
    ['entry.safetensors', file({ a: 5 }, 0), /tensor "a" is number, not \{dtype, shape, data_offsets\}/],
    ['metadata-value.safetensors', file({ __metadata__: { note: 1 } }, 0), /__metadata__ "note" is number, not a string/],
    ['metadata-type.safetensors', file({ __metadata__: 'x' }, 0), /__metadata__ is string, not an object of strings/],
    ['utf8.safetensors', file(null, 0, '{"\xff"}').map((b, i) => (i === 10 ? 0xff : b)), /not valid UTF-8/],
    ['json.safetensors', file(null, 0, '{"a": '), /invalid JSON/],
  ];
  for (const [name, bytes, pattern] of cases) {
    const err = (await loadAll(bytes, name)) as Error | null;
    t.ok(err instanceof CheckpointError, `${name}: a CheckpointError (${err?.message})`);
    t.match(err?.message, pattern, `${name}: ${err?.message}`);
    t.match(err?.message, name, `${name}: names the file`);
  }
});

t.test('well-formed headers the reference parser accepts load', async (t) => {
  // Entries listed out of offset order, an empty tensor, metadata null, and a file with no tensors.
  const ok = await openSafetensors(file({ b: f32([1], [8, 12]), e: f32([0, 3], [8, 8]), a: f32([2], [0, 8]), __metadata__: null }, 12));
  t.same(ok.keys(), ['b', 'e', 'a']);
  // Data bytes 0..11: a = bytes 0..7 as two f32, b = bytes 8..11.
  const expect = new Float32Array(Uint8Array.from({ length: 12 }, (_, i) => i).buffer);
  t.same(Array.from(await ok.read('a')), [expect[0], expect[1]]);
  t.same(Array.from(await ok.read('b')), [expect[2]]);
  t.same(Array.from(await ok.read('e')), []);
  t.same(ok.metadata, {});
  const empty = await openSafetensors(file({ __metadata__: { k: 'v' } }, 0));
  t.same(empty.keys(), []);
  t.same(empty.metadata, { k: 'v' });
});

t.test('a missing file, a directory or an unreadable file is a CheckpointError naming the path', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'difrep-st-fs-'));
  const sub = join(dir, 'weights.safetensors');
  await mkdir(sub);
  await writeFile(join(dir, 'plain'), 'not a directory');
  const cases: [string, RegExp][] = [
    [join(dir, 'missing.safetensors'), /cannot open the checkpoint: no such file or directory \(ENOENT\)/],
    [sub, /cannot read the checkpoint: is a directory \(EISDIR\)/],
    [join(dir, 'plain', 'below.safetensors'), /cannot open the checkpoint: a component of the path is not a directory \(ENOTDIR\)/],
  ];
  for (const [path, pattern] of cases) {
    for (const open of [openSafetensors, openCheckpoint]) {
      const err = await open(path).then(() => null, (e: Error) => e);
      t.ok(err instanceof CheckpointError, `${open.name} ${path}: a CheckpointError`);
      t.match(err?.message, pattern);
      t.ok(err?.message.startsWith(`${path}: `), `names the path: ${err?.message}`);
    }
  }
  const locked = join(dir, 'locked.safetensors');
  await writeFile(locked, file({}, 0));
  await chmod(locked, 0o000);
  const isRoot = process.getuid?.() === 0; // root reads a file whatever its mode
  const err = await openCheckpoint(locked).then(() => null, (e: Error) => e);
  if (isRoot) t.equal(err, null, 'root may read a mode-000 file');
  else t.match(err?.message, `${locked}: cannot open the checkpoint: permission denied (EACCES)`);
  await rm(dir, { recursive: true });
});
