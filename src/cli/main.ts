// The `difrep` command line. Subcommands land with their issues.
const [command] = process.argv.slice(2);

switch (command) {
  case 'demo':
    console.log('difrep demo: not built yet. It will load the shipped small U-Net, extract features and train every head (see the demo issue). Try `npm test` meanwhile.');
    break;
  default:
    console.log('usage: difrep <command>\n\ncommands:\n  demo     the main job (coming)\n  parity   compare against a PyTorch reference dump (coming)');
    process.exit(command ? 1 : 0);
}
