// `difrep parity FILE... [--tol 1e-4]`: compares the engine with PyTorch reference dumps.
import { createEngine } from '../engine/engine.ts';
import { parity } from '../train/parity.ts';

export async function parityCommand(args: string[]): Promise<number> {
  const files: string[] = [];
  let tol = 1e-4;
  let gradTol = 1e-3;
  let unetFile: string | undefined;
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--tol') tol = Number(args[++i]);
    else if (args[i] === '--grad-tol') gradTol = Number(args[++i]);
    else if (args[i] === '--unet') unetFile = args[++i];
    else if (args[i] === '--help' || args[i] === '-h') {
      console.log('usage: difrep parity FILE.safetensors... [--tol REL] [--grad-tol REL] [--unet UNET.safetensors]\n\n  Rebuilds the model (U-Net, attention head, DifFormer or DifFeed) from each dump\'s metadata, runs it,\n  and prints per tensor the max abs error and max|a-r|/max|r|. Exit 1 if any tensor is above its\n  tolerance: --tol for forward tensors (default 1e-4), --grad-tol for gradients and the Adam step\n  (default 1e-3). --unet: for attention-head and DifFormer dumps, recompute their input features feat.*\n  from input.x0 with the U-Net weights of that dump (adm64.safetensors) and compare them too.');
      return 0;
    } else files.push(args[i]);
  }
  if (!files.length || !(tol > 0)) {
    console.error('usage: difrep parity FILE.safetensors... [--tol REL] [--grad-tol REL] [--unet UNET.safetensors]');
    return 2;
  }
  const engine = await createEngine();
  console.log(`adapter: ${engine.handle.info.description || engine.handle.info.device || engine.handle.info.vendor}`);
  let ok = true;
  for (const file of files) {
    console.log(`\n${file}`);
    const report = await parity(engine, file, {
      forwardTolerance: tol,
      gradientTolerance: gradTol,
      unetFile,
      onResult: (c) => console.log(`  ${c.pass ? 'ok  ' : 'FAIL'} ${c.name.padEnd(14)} max abs ${c.maxAbs.toExponential(2)}  max rel ${c.maxRel.toExponential(2)}${c.note ? `  (${c.note})` : ''}`),
      onNote: (n) => console.log(`  note: ${n}`),
    });
    const worst = report.results.reduce((w, c) => (c.maxRel > w.maxRel ? c : w), report.results[0]);
    console.log(`  ${report.pass ? 'PASS' : 'FAIL'}: ${report.results.filter((c) => c.pass).length}/${report.results.length} tensors within tolerance (forward ${tol}, gradients ${gradTol}); worst ${worst.name} ${worst.maxRel.toExponential(2)}`);
    ok &&= report.pass;
  }
  engine.dispose();
  return ok ? 0 : 1;
}
