// The flat-index convention of every kernel that runs one invocation per element (or per row): a
// 1-D run of invocations in workgroups of `size`, laid over a 2-D grid of workgroups when there are
// more than 65,535 (the x limit every adapter guarantees). `flatMain` opens the kernel's `main` with
// that index and `grid1d` is the dispatch that covers it; both live here so they stay in step.

/** `@compute … fn main(…) {` and `let <index>` = the flat invocation index (per workgroup when `perWorkgroup`). */
export function flatMain(size: number, index = 'i', perWorkgroup = false): string {
  const lane = perWorkgroup ? 'lane' : 'lid';
  return `@compute @workgroup_size(${size})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) ${lane}: u32) {
  let ${index} = ${perWorkgroup ? 'wid.y * nwg.x + wid.x' : `(wid.y * nwg.x + wid.x) * ${size}u + lid`};`;
}

/** Workgroups along one dimension of a dispatch that every adapter accepts (maxComputeWorkgroupsPerDimension's default). */
export const MAX_WORKGROUPS_PER_DIMENSION = 65535;

/** Workgroup counts for `threads` invocations in groups of `size`, split over x and y (x ≤ 65535). */
export function grid1d(threads: number, size: number): [number, number] {
  const groups = Math.ceil(threads / size);
  if (groups <= MAX_WORKGROUPS_PER_DIMENSION) return [groups, 1];
  const x = MAX_WORKGROUPS_PER_DIMENSION;
  return [x, Math.ceil(groups / x)];
}

/**
 * How a flat kernel walks `size` values: as vec4s when they divide into them (`vec4`), else one by
 * one; `count` is the number of loads, for its `n` uniform and grid1d.
 */
export function elementLoads(size: number): { vec4: boolean; count: number } {
  const vec4 = size % 4 === 0;
  return { vec4, count: vec4 ? size / 4 : size };
}
