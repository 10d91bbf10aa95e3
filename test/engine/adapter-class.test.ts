import t from 'tap';
import { adapterClass } from '../../src/engine/device.ts';

const describe = (vendor: string, architecture: string, device: string, description: string) => ({ vendor, architecture, device, description, features: [], limits: {} });

t.test('adapterClass names the families that kernel presets are chosen for', async (t) => {
  // The strings these adapters report through Dawn and Chromium.
  t.equal(adapterClass(describe('mesa', 'software', '', 'llvmpipe: Mesa 25.0.7-2~bpo12+1 (LLVM 15.0.6)')), 'llvmpipe');
  t.equal(adapterClass(describe('google', 'swiftshader', '', '')), 'swiftshader');
  t.equal(adapterClass(describe('nvidia', 'hopper', '', 'NVIDIA: 580.159.04')), 'nvidia');
  t.equal(adapterClass(describe('amd', 'rdna-3', '', '')), 'amd');
  t.equal(adapterClass(describe('intel', 'xe', '', '')), 'intel');
  t.equal(adapterClass(describe('apple', 'metal-3', '', '')), 'apple');
  t.equal(adapterClass(describe('', '', '', '')), 'other');
});
