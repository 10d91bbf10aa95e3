// difrep's public surface (browser-safe: the Node-only file and dataset helpers of src/train and
// src/cli are reached through the `difrep` CLI; in a checkout, import them by path).
export * from './engine/index.ts';
export { ADM_256_UNCOND, planUNet, stateDictShapes, type UNetFlags, type UNetPlan } from './model/unet-config.ts';
export { BindingLimitError, type ForwardOptions, type ForwardResult, UNet } from './model/unet.ts';
export { describeMapping, paperBlocks } from './model/block-roles.ts';
export { gaussianNoise, linearSchedule, qSample } from './model/diffusion.ts';
export { openCheckpoint, openSafetensors, openTorchCheckpoint, encodeSafetensors, CheckpointError, UnsafePickleError, withPrefix, type TensorSource } from './model/checkpoint/index.ts';
export { CheckpointMismatchError } from './model/state-dict.ts';
export { LinearProbe } from './model/heads/linear-probe.ts';
export { AttentionHead, DIFFORMER_DEFAULTS, type AttentionHeadOptions } from './model/heads/attention-head.ts';
export { DifFeed, type DifFeedOptions } from './model/heads/difeed.ts';
export { Adam, OptimizerGroups, Sgd, StepLR } from './train/optimizer.ts';
export { trainStep } from './train/train-step.ts';
export { knnClassify } from './train/eval/knn.ts';
export { ckaMatrix } from './train/eval/cka.ts';
export { preprocess as preprocessImage, type Rgb } from './train/data/preprocess.ts';
export { type GreyImages, toModelInput as greyImagesToModelInput } from './train/data/grey-images.ts';
export { noiseSeed } from './train/noise-seed.ts';
