// cachedKernelFactory: kernels are built once per set of options (ops ask for theirs on every
// dispatch), and no two sets of options share a source.
import t from 'tap';
import { unaryKernel } from '../../kernels/elementwise.wgsl.ts';
import { cachedKernelFactory } from '../../kernels/kernel-source.ts';
import { subgroupMatmulKernel } from '../../kernels/matmul-subgroup.wgsl.ts';
import { uniformLayout } from '../../kernels/uniform-layout.ts';

const PARAMS = uniformLayout({ n: 'u32' });

t.test('a cached kernel factory builds each set of arguments once and tells every set apart', async (t) => {
  const built: string[] = [];
  const factory = cachedKernelFactory((variant: { scale: number; vec4: boolean }, name = 'k') => {
    built.push(JSON.stringify([variant, name]));
    return { key: `${name}.${variant.scale}${variant.vec4 ? '.vec4' : ''}`, code: `// ${variant.scale}`, params: PARAMS };
  });
  const a = factory({ scale: 2, vec4: true });
  t.equal(factory({ scale: 2, vec4: true }), a, 'equal arguments: the same source, not built again');
  t.equal(built.length, 1);
  t.equal(factory({ scale: 3, vec4: true }).key, 'k.3.vec4', 'a field that differs: its own source');
  t.equal(factory({ scale: 2, vec4: false }).key, 'k.2');
  t.equal(factory({ scale: 2, vec4: true }, 'other').key, 'other.2.vec4', 'a later argument that differs');
  t.equal(built.length, 4);
  t.ok(Object.isFrozen(a), 'shared sources are frozen');
  t.throws(() => { (a as { code: string }).code = 'changed'; }, TypeError, 'so no caller can change another\'s');
});

t.test('the kernel modules hand out the same source for the same options and another for others', async (t) => {
  t.equal(unaryKernel('silu', true), unaryKernel('silu', true));
  t.not(unaryKernel('silu', true).code, unaryKernel('silu', false).code);
  t.not(unaryKernel('silu', true).code, unaryKernel('relu', true).code);
  const gemm = { transA: false, transB: false, bias: false };
  t.equal(subgroupMatmulKernel(gemm, 32, 2), subgroupMatmulKernel({ ...gemm }, 32, 2));
  t.not(subgroupMatmulKernel(gemm, 32, 2).key, subgroupMatmulKernel({ ...gemm, transA: true }, 32, 1).key);
  t.not(subgroupMatmulKernel(gemm, 32, 2).key, subgroupMatmulKernel(gemm, 32, 2, 'rows').key);
});
