// A kernel's bind group layout, read from its WGSL declarations.
import t from 'tap';
import { bindGroupLayoutEntries } from '../../src/engine/kernel-registry.ts';

t.test('bindGroupLayoutEntries: uniforms at a dynamic offset, storage read-only or writable as declared', async (t) => {
  const code = `struct Params { n: u32 }
@group(0) @binding(0) var<uniform> u: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2)
var<storage, read_write> y: array<f32>;
@group(0) @binding(3) var<storage> z: array<vec4<f32>>;`;
  t.same(bindGroupLayoutEntries(code, 'k').map((e) => [e.binding, e.buffer!.type, e.buffer!.hasDynamicOffset]), [
    [0, 'uniform', true],
    [1, 'read-only-storage', false],
    [2, 'storage', false],
    [3, 'read-only-storage', false], // WGSL's default access for storage is read
  ]);
});

t.test('bindGroupLayoutEntries: a kernel without its uniforms at binding 0 is refused by name', async (t) => {
  t.throws(() => bindGroupLayoutEntries('@group(0) @binding(0) var<storage, read> x: array<f32>;', 'noUniforms'), /noUniforms: a kernel declares its uniforms as @group\(0\) @binding\(0\)/);
  t.throws(() => bindGroupLayoutEntries('@group(0) @binding(1) var<uniform> u: P;\n@group(0) @binding(0) var<storage, read> x: array<f32>;', 'elsewhere'), /elsewhere:/);
});
