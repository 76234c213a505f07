import type { Command } from 'commander';
import { FileDevice } from '../io/FileDevice.js';
import { serveNbd } from '../io/nbd/NbdServer.js';
import { formatBytes } from '../util/size.js';
import { emitEvent } from './output.js';
import { untilSignal } from './untilSignal.js';

/** Options of `blockmirror serve`, as commander parses them. */
interface ServeCommandOptions {
  export: string;
  readOnly: boolean;
  description?: string;
  json: boolean;
  verbose: boolean;
}

export function registerServeCommand(program: Command): void {
  program
    .command('serve')
    .description('export an image over NBD until SIGINT or SIGTERM')
    .argument('<image>', 'raw image file or block device')
    .requiredOption(
      '--export <uri>',
      'where to listen and the export name: nbd+unix:///NAME?socket=PATH, or nbd://127.0.0.1:PORT/NAME (no host: 127.0.0.1; port 0: any free port)',
    )
    .option('--read-only', 'refuse writes', false)
    .option('--description <text>', 'export description shown to clients (nbdinfo --list)')
    .option('--json', 'NDJSON events on stdout', false)
    .option('--verbose', 'report clients that break the protocol or disconnect mid-request', false)
    .action(async (image: string, opts: ServeCommandOptions) => {
      await runServe(image, opts);
    });
}

async function runServe(image: string, opts: ServeCommandOptions): Promise<void> {
  const device = await FileDevice.open({ kind: 'file', path: image, writable: !opts.readOnly, role: opts.readOnly ? 'source' : 'target' });
  try {
    const { server, uri } = await serveNbd(device, opts.export, {
      readOnly: opts.readOnly,
      description: opts.description,
      onClientError: opts.verbose ? (err) => process.stderr.write(`blockmirror serve: client: ${err.message}\n`) : undefined,
    });
    const mode = opts.readOnly ? 'read-only' : 'writable';
    if (opts.json) emitEvent('listening', { image, uri, size: device.size, readOnly: opts.readOnly });
    // The URI line is the contract scripts wait for: it says the socket is ready, and which port port 0 became.
    else process.stdout.write(`serving ${image} (${formatBytes(device.size)}, ${mode}) at ${uri}\n`);
    const signal = await untilSignal();
    await server.close();
    if (!opts.readOnly) await device.flush();
    if (opts.json) emitEvent('stopped', { signal });
    else process.stderr.write(`blockmirror serve: ${signal}: stopped\n`);
  } finally {
    await device.close();
  }
}
