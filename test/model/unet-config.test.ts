import t from 'tap';
import { ADM_256_UNCOND, planUNet, stateDictShapes, UNetConfigError, type UNetFlags } from '../../src/model/unet-config.ts';
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
  for (const file of ['adm32-mini.safetensors', 'adm64.safetensors', 'unseen-config.safetensors', 'conv-resample.safetensors']) {
    const dump = await openSafetensors(new URL(`../fixtures/${file}`, import.meta.url).pathname);
    const shapes = stateDictShapes(planUNet(flagsFromJson(dump.metadata.config)));
    const keys = dump.keys().filter((k) => k.startsWith('param.')).map((k) => k.slice(6));
    t.same(new Set(keys), new Set(shapes.keys()), `${file}: key set`);
    for (const k of keys) t.same(dump.info(`param.${k}`)!.shape, shapes.get(k), k);
    await dump.close();
  }
});

// Tensor and parameter counts and the resampler keys of state_dicts built by the real code
// (PyTorch 1.13, openai/improved-diffusion 1bc7bbb and openai/guided-diffusion 22e0df8 create_model).
const CONV_RESAMPLER_MODELS: [string, UNetFlags, number, number, [string, number][]][] = [
  ['improved-diffusion CIFAR-10 (channel_mult 1,2,2,2 is its image-32 default)',
    { image_size: 32, num_channels: 128, num_res_blocks: 3, channel_mult: '1,2,2,2', learn_sigma: true, attention_resolutions: '16,8', num_heads: 4, use_scale_shift_norm: true, dropout: 0.3 },
    446, 52_546_438,
    [['input_blocks.4.0.op', 128], ['input_blocks.8.0.op', 256], ['input_blocks.12.0.op', 256], ['output_blocks.3.1.conv', 256], ['output_blocks.7.2.conv', 256], ['output_blocks.11.2.conv', 256]]],
  ['improved-diffusion ImageNet-64',
    { image_size: 64, num_channels: 128, num_res_blocks: 3, learn_sigma: true, attention_resolutions: '16,8', num_heads: 4, use_scale_shift_norm: true },
    450, 121_063_942,
    [['input_blocks.4.0.op', 128], ['input_blocks.8.0.op', 256], ['input_blocks.12.0.op', 384], ['output_blocks.3.2.conv', 512], ['output_blocks.7.2.conv', 384], ['output_blocks.11.1.conv', 256]]],
  ['guided-diffusion model_and_diffusion_defaults()',
    { image_size: 64, num_channels: 128, num_res_blocks: 2, num_heads: 4, attention_resolutions: '16,8', use_scale_shift_norm: true },
    338, 92_025_731,
    [['input_blocks.3.0.op', 128], ['input_blocks.6.0.op', 256], ['input_blocks.9.0.op', 384], ['output_blocks.2.2.conv', 512], ['output_blocks.5.2.conv', 384], ['output_blocks.8.1.conv', 256]]],
  ['guided-diffusion 32×32, channel_mult 1,2,2, attention at 8',
    { image_size: 32, num_channels: 32, num_res_blocks: 1, channel_mult: '1,2,2', attention_resolutions: '8', num_head_channels: 32, use_scale_shift_norm: true, resblock_updown: false },
    166, 1_192_387,
    [['input_blocks.2.0.op', 32], ['input_blocks.4.0.op', 64], ['output_blocks.1.2.conv', 64], ['output_blocks.3.1.conv', 64]]],
];

for (const [name, flags, tensors, parameters, resamplers] of CONV_RESAMPLER_MODELS) {
  t.test(`conv resamplers: ${name} has PyTorch's ${tensors} tensors, ${parameters.toLocaleString('en')} parameters and resampler keys`, async (t) => {
    const shapes = stateDictShapes(planUNet(flags));
    t.equal(shapes.size, tensors);
    t.equal([...shapes.values()].reduce((n, s) => n + s.reduce((p, d) => p * d, 1), 0), parameters);
    t.same([...shapes.keys()].filter((k) => /\.(op|conv)\.weight$/.test(k)), resamplers.map(([p]) => `${p}.weight`), 'resampler keys in order');
    for (const [p, ch] of resamplers) {
      t.same(shapes.get(`${p}.weight`), [ch, ch, 3, 3], `${p}.weight`);
      t.same(shapes.get(`${p}.bias`), [ch], `${p}.bias`);
    }
  });
}

t.test('resblock_updown: unset means create_model\'s default (False, conv resamplers); true means ResBlocks', async (t) => {
  const flags = { image_size: 16, num_channels: 32, num_res_blocks: 1, channel_mult: '1,1', attention_resolutions: '8', num_head_channels: 32 };
  for (const plan of [planUNet(flags), planUNet({ ...flags, resblock_updown: false })]) {
    // blocks: 1 conv, 2 res, 3 Downsample, 4 res, 5 middle, 6 res, 7 res + attention + Upsample, 8, 9 res.
    t.same(plan.blocks[2].layers, [{ kind: 'down', prefix: 'input_blocks.2.0', channels: 32 }]);
    t.same(plan.blocks[6].layers.map((l) => l.kind), ['res', 'attn', 'up']);
    t.same(plan.blocks[6].layers[2], { kind: 'up', prefix: 'output_blocks.1.2', channels: 32 });
    t.same([plan.blocks[2].size, plan.blocks[6].size], [8, 16]);
  }
  const res = planUNet({ ...flags, resblock_updown: true });
  t.same(res.blocks[2].layers.map((l) => l.kind === 'res' && l.down), [true]);
  t.same(res.blocks[6].layers.map((l) => l.kind), ['res', 'attn', 'res']);
});

t.test('attention_resolutions: unset means create_model\'s default "16"; "" means attention in the middle block only', async (t) => {
  const flags = { image_size: 32, num_channels: 32, num_res_blocks: 1, channel_mult: '1,1', num_head_channels: 32 };
  const withAttention = (plan: ReturnType<typeof planUNet>) => plan.blocks.filter((b) => b.layers.some((l) => l.kind === 'attn')).map((b) => [b.b, b.size]);
  // 16 on a 32 image is ds 2, the second level: blocks 4 (input), 5 (middle), 6 and 7 (decoder).
  t.same(withAttention(planUNet(flags)), [[4, 16], [5, 16], [6, 16], [7, 32]]);
  t.same(withAttention(planUNet({ ...flags, attention_resolutions: '16' })), withAttention(planUNet(flags)));
  t.same(withAttention(planUNet({ ...flags, attention_resolutions: '' })), [[5, 16]]);
});

t.test('unsupported or inconsistent configs are clear errors', async (t) => {
  t.throws(() => planUNet({ ...ADM_256_UNCOND, class_cond: true }), /class_cond/);
  t.throws(() => planUNet({ ...ADM_256_UNCOND, num_head_channels: 48 }), /not a multiple of num_head_channels 48/);
  t.throws(() => planUNet({ ...ADM_256_UNCOND, image_size: 32, channel_mult: '' }), /unsupported image_size 32 without an explicit channel_mult/);
});

t.test('every key is a known flag: a misspelt one is an error naming its likely spelling, a diffusion flag must have the value difrep implements', async (t) => {
  const base = '"image_size": 32, "num_channels": 32, "num_res_blocks": 1, "channel_mult": "1,2"';
  const plan = (extra: string) => planUNet(flagsFromJson(`{${base}, ${extra}}`));
  // One letter short: guided-diffusion's num_head_channels, which changes no weight's shape.
  t.throws(() => plan('"num_head_channel": 16'), /unknown flag "num_head_channel": did you mean num_head_channels\?/);
  t.throws(() => plan('"resblock_up_down": true'), /unknown flag "resblock_up_down": did you mean resblock_updown\?/);
  t.throws(() => plan('"zzz": 1'), /unknown flag "zzz": the flags are create_model's \(image_size, .*\) and guided-diffusion's diffusion flags/);
  t.throws(() => plan('"noise_schedule": "cosine"'), /noise_schedule "cosine" is not supported: difrep implements noise_schedule "linear"/);
  t.throws(() => plan('"diffusion_steps": 4000'), /diffusion_steps 4000 is not supported: difrep implements diffusion_steps 1000/);
  t.throws(() => plan('"predict_xstart": true'), /predict_xstart true is not supported/);
  t.throws(() => plan('"timestep_respacing": "250"'), /timestep_respacing "250" is not supported.*--ddim-steps/);
  t.throws(() => plan('"sigma_small": true'), /sigma_small true is not supported/);
  t.throws(() => plan('"use_kl": true'), /use_kl true is not supported/);
  // guided-diffusion's defaults, written out as its scripts' flags carry them, plan as without them.
  const defaults = '"diffusion_steps": 1000, "noise_schedule": "linear", "timestep_respacing": "", "predict_xstart": false, "rescale_timesteps": true, "sigma_small": false, "use_kl": false, "rescale_learned_sigmas": false';
  t.same(plan(defaults).blocks, planUNet(flagsFromJson(`{${base}}`)).blocks);
});

t.test('every size a config sets is bounded before anything is allocated (bad config → error text)', async (t) => {
  const mini = { image_size: 32, num_channels: 32, num_res_blocks: 1, channel_mult: '1,2', attention_resolutions: '2', num_head_channels: 32 };
  const cases: [string, Record<string, unknown>, string][] = [
    ['fractional channel_mult', { channel_mult: '0.01,2' }, 'channel_mult "0.01,2" must be a comma-separated list of positive integers like "1,2,2,4" (got 0.01)'],
    ['zero channel_mult', { channel_mult: '1,0' }, 'channel_mult "1,0" must be a comma-separated list of positive integers like "1,2,2,4" (got 0)'],
    ['word channel_mult', { channel_mult: 'wide' }, 'channel_mult "wide" must be a comma-separated list of positive integers'],
    ['too many levels', { image_size: 1024, channel_mult: '1,1,1,1,1,1,1,1,1' }, 'channel_mult "1,1,1,1,1,1,1,1,1" has 9 levels; from 1 to 8 are allowed'],
    ['too many halvings', { image_size: 8, channel_mult: '1,1,1,1,1' }, 'image_size 8 cannot be halved 4 times (channel_mult has 5 levels)'],
    ['too wide a level', { num_channels: 1024, channel_mult: '1,4' }, 'level 1 has channel_mult 4 × num_channels 1024 = 4096 channels; it must be a multiple of 32 from 32 to 2048'],
    ['negative in_channels', { in_channels: -3 }, 'in_channels -3 is out of range: it must be an integer from 1 to 64'],
    ['zero num_heads', { num_heads: 0, num_head_channels: -1 }, 'num_heads 0 is out of range: it must be an integer from 1 to 64'],
    ['heads that do not divide', { num_heads: 3, num_head_channels: -1 }, '64 channels do not split into num_heads 3 heads'],
    ['zero num_head_channels', { num_head_channels: 0 }, 'num_head_channels 0 is out of range: it must be an integer from 1 to 2048 (or -1 for unset)'],
    ['zero num_heads_upsample', { num_heads_upsample: 0 }, 'num_heads_upsample 0 is out of range: it must be an integer from 1 to 64 (or -1 for unset)'],
    ['word attention_resolutions', { attention_resolutions: 'abc' }, 'attention_resolutions "abc" must be a comma-separated list of positive integers like "32,16,8" (got abc)'],
    ['negative attention resolution', { attention_resolutions: '16,-8' }, 'attention_resolutions "16,-8" must be a comma-separated list of positive integers like "32,16,8" (got -8)'],
    ['huge num_channels', { num_channels: 20000 }, 'num_channels 20000 is out of range: it must be an integer from 32 to 1024'],
    ['num_channels off the groups', { num_channels: 48 }, 'num_channels 48 must be a multiple of 32 (GroupNorm\'s 32 groups) from 32 to 1024'],
    ['zero num_channels', { num_channels: 0 }, 'num_channels 0 is out of range: it must be an integer from 32 to 1024'],
    ['string num_channels', { num_channels: '32' }, 'num_channels "32" is out of range: it must be an integer from 32 to 1024'],
    ['huge num_res_blocks', { num_res_blocks: 3000 }, 'num_res_blocks 3000 is out of range: it must be an integer from 1 to 16'],
    ['fractional num_res_blocks', { num_res_blocks: 1.5 }, 'num_res_blocks 1.5 is out of range: it must be an integer from 1 to 16'],
    ['image not a power of two', { image_size: 96 }, 'image_size 96 must be a power of two from 8 to 1024'],
    ['image too large', { image_size: 4096 }, 'image_size 4096 is out of range: it must be an integer from 8 to 1024'],
    ['image missing', { image_size: undefined }, 'image_size is missing: give it as an integer from 8 to 1024'],
    ['num_channels missing', { num_channels: undefined }, 'num_channels is missing: give it as an integer from 32 to 1024'],
    ['non-boolean learn_sigma', { learn_sigma: 'yes' }, 'learn_sigma "yes" must be true or false'],
    ['dropout out of range', { dropout: 2 }, 'dropout 2 must be a number from 0 to below 1'],
    ['dropout 1 (every hidden activation zeroed in training)', { dropout: 1 }, 'dropout 1 must be a number from 0 to below 1'],
    // 1024 channels × (1,2,2,2,2,2,2,2) levels × 16 res blocks: every size allowed, the total is not.
    ['too many parameters', { image_size: 1024, num_channels: 1024, channel_mult: '1,2,2,2,2,2,2,2', num_res_blocks: 16 },
      'allowed: lower num_channels, channel_mult or num_res_blocks'],
  ];
  for (const [what, change, message] of cases) {
    const err = (() => {
      try {
        planUNet({ ...mini, ...change } as never);
        return null;
      } catch (e) {
        return e as Error;
      }
    })();
    t.ok(err instanceof UNetConfigError, `${what}: a UNetConfigError`);
    t.equal(err?.message.slice(0, 'U-Net config: '.length), 'U-Net config: ');
    t.match(err?.message, message, `${what}: ${err?.message}`);
  }
  t.throws(() => flagsFromJson('null'), /config must be a JSON object of create_model flags, got null/);
  t.throws(() => flagsFromJson('[32]'), /config must be a JSON object/);
});

t.test('the real configs are within the bounds', async (t) => {
  // The 256×256 ADM model (paper backbone) and the 512×512 one (default channel_mult starts at 0.5).
  t.equal(planUNet(ADM_256_UNCOND).blocks.length, 37);
  const adm512 = planUNet({ ...ADM_256_UNCOND, image_size: 512 });
  t.same(adm512.channelMult, [0.5, 1, 1, 2, 2, 4, 4]);
  t.equal(adm512.finalChannels, 128);
  // guided-diffusion: attention at image_size // resolution, so 24 on a 32 image means ds 1.
  const floor = planUNet({ image_size: 32, num_channels: 32, num_res_blocks: 1, channel_mult: '1,2', attention_resolutions: '24', num_head_channels: 32 });
  t.equal(floor.blocks[1].layers.at(-1)!.kind, 'attn');
  t.equal(floor.blocks[1].size, 32);
});
