// The paper's block choices mapped by role (SPEC §2 "Any depth"), against mappings worked out by hand
// from the block lists: decoder level j (0 = deepest) holds num_res_blocks + 1 blocks after the middle M.
import t from 'tap';
import { paperBlocks } from '../../src/model/block-roles.ts';
import { ADM_256_UNCOND, planUNet } from '../../src/model/unet-config.ts';

t.test('the 37-block 256×256 model keeps the paper\'s numbers', async (t) => {
  const p = paperBlocks(planUNet(ADM_256_UNCOND));
  t.same(p, { feature: 24, bottleneck: [21, 24, 27, 30, 33, 36], windowed: [20, 21, 22, 23, 24], all: Array.from({ length: 18 }, (_, i) => 20 + i), difformer: [19, 24, 30], mapped: false });
});

t.test('the 19-block reference U-Net maps as CLARIFICATIONS lists', async (t) => {
  const p = paperBlocks(planUNet({ image_size: 32, num_channels: 32, num_res_blocks: 2, channel_mult: '1,2,2', attention_resolutions: '16,8', num_head_channels: 32 }));
  t.same([p.feature, p.bottleneck, p.difformer], [15, [12, 15, 18], [10, 15, 18]]);
});

t.test('one res block per level: the roles, not the 37-block offsets', async (t) => {
  // b1 conv; b2 res, b3 down; b4 res, b5 down; b6 res, b7 down; b8 res → M = 9, N = 17; decoder
  // levels of two blocks: {10, 11}, {12, 13}, {14, 15}, {16, 17}.
  const p = paperBlocks(planUNet({ image_size: 32, num_channels: 32, num_res_blocks: 1, channel_mult: '1,2,2,2', attention_resolutions: '8', num_head_channels: 32 }));
  t.same(p, { feature: 13, bottleneck: [11, 13, 15, 17], windowed: [10, 11, 12, 13, 14], all: [10, 11, 12, 13, 14, 15, 16, 17], difformer: [9, 13, 17], mapped: true });
});

t.test('a 37-block model of another layout is mapped too, and says so', async (t) => {
  // 3 levels of 5 res blocks: b1 conv, b2–6 res, b7 down, b8–12, b13 down, b14–18 → M = 19, N = 37;
  // decoder levels of six blocks: {20..25}, {26..31}, {32..37}.
  const plan = planUNet({ image_size: 32, num_channels: 32, num_res_blocks: 5, channel_mult: '1,2,2', attention_resolutions: '8' });
  t.equal(plan.blocks.length, 37);
  const p = paperBlocks(plan);
  t.same([p.feature, p.bottleneck, p.difformer, p.mapped], [27, [21, 27, 33], [19, 27, 33], true]);
});
