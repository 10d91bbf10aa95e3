// The name of one t × b feature map in a feature cache (a chunk's tensor name, a FeatureArrays
// key): `t<t>.b<b>`, e.g. t150.b9. Block 0 is the U-Net's input x0 itself, the raw-pixel baseline:
// no noise and no U-Net, so no timestep; its key is `pixels`.
export const PIXEL_BLOCK = 0;

export const featureKey = (t: number, b: number): string => (b === PIXEL_BLOCK ? 'pixels' : `t${t}.b${b}`);
