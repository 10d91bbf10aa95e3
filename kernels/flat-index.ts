// The flat-index convention of every kernel that runs one invocation per element (or per row), or
// per VALUES_PER_INVOCATION elements: a 1-D run of invocations in workgroups of `size`, laid over a
// 2-D grid of workgroups when there are more than 65,535 (the x limit every adapter guarantees).
// `flatMain` opens the kernel's `main` with that index and `grid1d` is the dispatch that covers it;
// `flatBlockMain` and `blockGrid` are the same for several elements an invocation. They live here
// so they stay in step.

/** `@compute … fn main(…) {` and `let <index>` = the flat invocation index (per workgroup when `perWorkgroup`). */
export function flatMain(size: number, index = 'i', perWorkgroup = false): string {
  const lane = perWorkgroup ? 'lane' : 'lid';
  return `@compute @workgroup_size(${size})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) ${lane}: u32) {
  let ${index} = ${perWorkgroup ? 'wid.y * nwg.x + wid.x' : `(wid.y * nwg.x + wid.x) * ${size}u + lid`};`;
}

/**
 * Values each invocation of a flatBlockMain kernel takes. One value an invocation paid its index
 * and its bounds test per value: on lavapipe an add of 16M values at 4 (as vec4s) an invocation ran
 * 24.5 → 15.3 ms by interleaved medians on 2 cores (tfjs-backend-webgpu's took 19 ms).
 */
export const VALUES_PER_INVOCATION = 4;

/**
 * A whole `main` that runs `body` (WGSL reading its index as `i`) for each index below `count` (a
 * WGSL value): invocation lid of workgroup w takes w·size·k + j·size + lid for j < k =
 * VALUES_PER_INVOCATION (each step contiguous across the workgroup, as GPUs coalesce), all k
 * under one bounds test where the invocation's run is whole, else one at a time (its last lies
 * past the end then, so k − 1 of them). `body` must not `return`. Dispatch: blockGrid.
 */
export function flatBlockMain(size: number, count: string, body: string): string {
  const k = VALUES_PER_INVOCATION;
  const steps = Array.from({ length: k }, (_, j) => `{
    let i = first + ${size * j}u;
    ${body}
  }`);
  return `@compute @workgroup_size(${size})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let first = (wid.y * nwg.x + wid.x) * ${size * k}u + lid;
  if (first + ${size * (k - 1)}u < ${count}) {
  ${steps.join('\n  ')}
    return;
  }
  for (var j = 0u; j < ${k - 1}u; j++) {
    let i = first + j * ${size}u;
    if (i < ${count}) {
      ${body}
    }
  }
}`;
}

/** Workgroups of `size` for a flatBlockMain kernel over `count` indices. */
export const blockGrid = (count: number, size: number) => grid1d(Math.ceil(count / VALUES_PER_INVOCATION), size);

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
 * one; `count` is the number of loads, for its `n` uniform and its grid (grid1d or blockGrid).
 */
export function elementLoads(size: number): { vec4: boolean; count: number } {
  const vec4 = size % 4 === 0;
  return { vec4, count: vec4 ? size / 4 : size };
}
