// The name of one t × b feature map in a feature cache (a chunk's tensor name, a FeatureArrays
// key): `t<t>.b<b>`, e.g. t150.b9.
export const featureKey = (t: number, b: number): string => `t${t}.b${b}`;
