// The uniform layout packs named values where the WGSL struct it declares reads them: checked on
// the adapter by a kernel that copies every field, bit for bit, into a storage buffer.
import t from 'tap';
import { uniformLayout } from '../../kernels/uniform-layout.ts';
import { testEngine } from '../helpers/check.ts';

// Scalars declared between and before `dims` fields, so a packer that kept the declared order (or
// a struct that did) would put them at other offsets than the WGSL struct.
const layout = uniformLayout({ a: 'u32', shape: 'dims', b: 'f32', c: 'i32', strides: 'dims', d: 'u32' });
const values = { a: 7, shape: [2, 3, 5, 7, 11, 13, 17, 19], b: -1.5, c: -42, strides: [1, 4, 9], d: 0xffffffff };

t.test('every field reaches the kernel with its value', async (t) => {
  const e = await testEngine();
  const dim = (field: string) => [...Array(8).keys()].map((k) => `out[i0 + ${k}u] = u.${field}[${k >> 2}][${k & 3}];`);
  const kernel = {
    key: 'test.uniformLayout.echo',
    params: layout,
    code: `${layout.wgsl}
@group(0) @binding(1) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(1)
fn main() {
  out[0] = u.a;
  out[1] = bitcast<u32>(u.b);
  out[2] = bitcast<u32>(u.c);
  out[3] = u.d;
  var i0 = 4u;
  ${dim('shape').join('\n  ')}
  i0 = 12u;
  ${dim('strides').join('\n  ')}
}`,
  };
  const out = e.zeros([20], 'test.uniformLayout.out');
  e.dispatch({ kernel, bindings: [out], params: values, workgroups: [1] });
  const words = new Uint32Array((await out.read()).buffer);
  const bits = (x: number, type: 'f32' | 'i32') => new Uint32Array((type === 'f32' ? Float32Array : Int32Array).of(x).buffer)[0];
  t.same(Array.from(words.subarray(0, 4)), [7, bits(-1.5, 'f32'), bits(-42, 'i32'), 0xffffffff], 'scalars a, b, c, d');
  t.same(Array.from(words.subarray(4, 12)), values.shape, 'shape');
  t.same(Array.from(words.subarray(12, 20)), [1, 4, 9, 0, 0, 0, 0, 0], 'strides, zero past the rank');
  out.dispose();
});

t.test('dims fields come first, at 16-byte boundaries, and the size rounds to 16 bytes', async (t) => {
  t.same(layout.fields.map((f) => [f.name, f.offset]), [['shape', 0], ['strides', 32], ['a', 64], ['b', 68], ['c', 72], ['d', 76]]);
  t.equal(layout.byteLength, 80);
  t.equal(uniformLayout({ n: 'u32' }).byteLength, 16);
  t.match(layout.wgsl, /struct Params \{ shape: array<vec4<u32>, 2>, strides: array<vec4<u32>, 2>, a: u32, b: f32, c: i32, d: u32 \}/);
});

t.test('a wrong value is an error naming the kernel, the field and what was wrong', async (t) => {
  const pack = (v: Record<string, unknown>) => () => layout.pack({ ...values, ...v } as typeof values, 'k.test');
  t.throws(pack({ a: -1 }), /k\.test: uniform a = -1 is not a valid u32/);
  t.throws(pack({ a: 2 ** 32 }), /uniform a = 4294967296 is not a valid u32/);
  t.throws(pack({ a: 1.5 }), /uniform a = 1.5 is not a valid u32/);
  t.throws(pack({ c: 2 ** 31 }), /uniform c = 2147483648 is not a valid i32/);
  t.throws(pack({ b: Number.NaN }), /uniform b = NaN is not a valid f32/);
  t.throws(pack({ b: Infinity }), /uniform b = Infinity is not a valid f32/);
  t.throws(pack({ shape: [1, 2, 3, 4, 5, 6, 7, 8, 9] }), /k\.test: tensors of rank 9 exceed the engine's maximum rank 8/);
  t.throws(pack({ strides: [1, -2] }), /uniform strides\[1\] = -2 is not a valid u32/);
  t.throws(pack({ shape: 3 }), /uniform shape takes a list of dimensions/);
  t.throws(pack({ a: [1] }), /uniform a is a u32, not a list/);
  t.throws(pack({ d: undefined }), /k\.test: uniform d is missing/);
  t.throws(pack({ e: 1 }), /k\.test: unknown uniform e \(the kernel's are a, shape, b, c, strides, d\)/);
});
