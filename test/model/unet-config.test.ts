import t from 'tap';
import { ADM_256_UNCOND, planUNet, stateDictShapes } from '../../src/model/unet-config.ts';
import { openSafetensors } from '../../src/model/checkpoint/safetensors.ts';
import { flagsFromJson } from '../../src/model/unet-config.ts';

t.test('the 256x256 unconditional config has 566 tensors and 552,814,086 parameters (diffssl-spec §A.8, §C)', async (t) => {
  const plan = planUNet(ADM_256_UNCOND);
  const shapes = stateDictShapes(plan);
  t.equal(shapes.size, 566);
  let total = 0;
  for (const s of shapes.values()) total += s.reduce((p, d) => p * d, 1);
  t.equal(total, 552_814_086);
  t.equal(plan.blocks.length, 37);
  t.same(shapes.get('input_blocks.13.0.skip_connection.weight'), [1024, 512, 1, 1]);
  t.same(shapes.get('output_blocks.5.0.in_layers.2.weight'), [1024, 1536, 3, 3]);
  t.same(shapes.get('output_blocks.11.0.skip_connection.weight'), [512, 768, 1, 1]);
  t.same(shapes.get('input_blocks.13.1.qkv.weight'), [3072, 1024, 1]);
  // Block table of diffssl-spec §A.6: channels and resolutions of b24 and b37.
  t.equal(plan.blocks[23].outChannels, 1024);
  t.equal(plan.blocks[23].size, 16);
  t.equal(plan.blocks[36].size, 256);
  t.equal(plan.blocks[23].skipFrom, 14);
  // Parameters up to b24 (diffssl-spec §A.6 cumulative column): 415,471,616 including time_embed.
  let upTo24 = 0;
  for (const [k, s] of shapes) {
    const m = /^(input_blocks|output_blocks)\.(\d+)\./.exec(k);
    const inBlock = k.startsWith('time_embed') || k.startsWith('middle_block') || (m && (m[1] === 'input_blocks' || Number(m[2]) <= 4));
    if (inBlock) upTo24 += s.reduce((p, d) => p * d, 1);
  }
  t.equal(upTo24, 415_471_616);
});

t.test('the plans of the reference dumps list exactly their state_dict keys and shapes', async (t) => {
  for (const file of ['adm32-mini.safetensors', 'adm64.safetensors']) {
    const dump = await openSafetensors(new URL(`../fixtures/${file}`, import.meta.url).pathname);
    const shapes = stateDictShapes(planUNet(flagsFromJson(dump.metadata.config)));
    const keys = dump.keys().filter((k) => k.startsWith('param.')).map((k) => k.slice(6));
    t.same(new Set(keys), new Set(shapes.keys()), `${file}: key set`);
    for (const k of keys) t.same(dump.info(`param.${k}`)!.shape, shapes.get(k), k);
    await dump.close();
  }
});

t.test('unsupported or inconsistent configs are clear errors', async (t) => {
  t.throws(() => planUNet({ ...ADM_256_UNCOND, class_cond: true }), /class_cond/);
  t.throws(() => planUNet({ ...ADM_256_UNCOND, num_head_channels: 48 }), /not a multiple of num_head_channels 48/);
  t.throws(() => planUNet({ ...ADM_256_UNCOND, image_size: 96, channel_mult: '' }), /unsupported image_size 96/);
});
