import { access } from 'node:fs/promises';
import type { Command } from 'commander';
import { loadBitmap, saveBitmap, type BitmapFileHeader } from '../bitmap/BitmapFile.js';
import { DEFAULT_GRANULARITY, DirtyBitmap } from '../bitmap/DirtyBitmap.js';
import { ErrorCode, InvalidArgumentError } from '../errors.js';
import { formatBytes } from '../util/size.js';
import { ExitCode } from './exitCodes.js';
import { sizeOption } from './options.js';
import { emitEvent } from './output.js';

interface JsonOption {
  json: boolean;
}

interface CreateOptions extends JsonOption {
  size: number;
  granularity: number;
  allDirty: boolean;
  force: boolean;
}

/** `blockmirror bitmap info|clean|create`: inspect and make persistent bitmap files. */
export function registerBitmapCommand(program: Command): void {
  const bitmap = program.command('bitmap').description('inspect or create a persistent dirty bitmap file');
  bitmap
    .command('info')
    .description('print the header of a bitmap file and how much it marks dirty')
    .argument('<file>', 'bitmap file')
    .option('--json', 'one JSON object on stdout', false)
    .action(async (file: string, opts: JsonOption) => {
      await runInfo(file, opts);
    });
  bitmap
    .command('clean')
    .description('exit 0 only if the file is consistent and marks nothing dirty (the target is a full copy); else exit 2 saying why')
    .argument('<file>', 'bitmap file')
    .option('--json', 'the verdict as JSON on stdout', false)
    .action(async (file: string, opts: JsonOption) => {
      await runClean(file, opts);
    });
  bitmap
    .command('create')
    .description('write a new bitmap file for an image of the given size')
    .argument('<file>', 'bitmap file to create')
    .requiredOption('--size <size>', 'image size in bytes (suffixes: K, M, G, T)', sizeOption('--size'))
    .option('--granularity <size>', 'bytes per bit: a power of two from 512 to 64M', sizeOption('--granularity'), DEFAULT_GRANULARITY)
    .option('--all-dirty', 'mark every bit dirty (a target that still needs a full copy)', false)
    .option('--force', 'replace an existing file', false)
    .option('--json', 'the header written, as JSON on stdout', false)
    .action(async (file: string, opts: CreateOptions) => {
      await runCreate(file, opts);
    });
  for (const cmd of bitmap.commands) cmd.exitOverride();
}

/** The fields `info` prints, in order. */
function describe(file: string, header: BitmapFileHeader, dirtyBits: number, dirtyBytes: number): Record<string, unknown> {
  return {
    file,
    version: header.version,
    inUse: header.inUse,
    consistent: !header.inUse,
    granularity: header.granularity,
    size: header.size,
    bitCount: header.bitCount,
    generation: header.generation,
    dirtyBits,
    dirtyBytes,
  };
}

async function runInfo(file: string, opts: JsonOption): Promise<void> {
  // The stored bits, even of a file in use: info shows what the file says.
  const { bitmap, header } = await loadBitmap(file, { trustInUse: true });
  const info = describe(file, header, bitmap.count(), bitmap.dirtyBytes());
  if (opts.json) {
    emitEvent('bitmap-info', info);
    return;
  }
  const percent = header.size > 0 ? ((100 * bitmap.dirtyBytes()) / header.size).toFixed(2) : '0.00';
  const lines = [
    `file:        ${file}`,
    `format:      version ${header.version}`,
    `state:       ${header.inUse ? 'in use (inconsistent: a job had it open; treat it as all dirty)' : 'consistent'}`,
    `image size:  ${formatBytes(header.size)} (${header.size} bytes)`,
    `granularity: ${formatBytes(header.granularity)} (${header.granularity} bytes)`,
    `bits:        ${header.bitCount}`,
    `generation:  ${header.generation}`,
    `dirty:       ${bitmap.count()} bits, ${formatBytes(bitmap.dirtyBytes())} (${percent} %)`,
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
}

async function runClean(file: string, opts: JsonOption): Promise<void> {
  // A corrupt or unreadable file throws: main reports its code and exits 2.
  const { bitmap, consistent } = await loadBitmap(file, { trustInUse: true });
  const dirty = bitmap.count();
  let reason: string | undefined;
  if (!consistent) reason = 'the file is flagged in use: a job had it open and may have stopped without saving';
  else if (dirty > 0) reason = `${dirty} bits are dirty (${formatBytes(bitmap.dirtyBytes())})`;
  if (opts.json) {
    emitEvent('bitmap-clean', { file, clean: reason === undefined, reason: reason ?? null, dirtyBits: dirty });
  } else {
    process.stdout.write(reason === undefined ? `clean: ${file}\n` : `not clean: ${file}: ${reason}\n`);
  }
  if (reason !== undefined) process.exitCode = ExitCode.FAILED;
}

async function runCreate(file: string, opts: CreateOptions): Promise<void> {
  if (!opts.force && (await exists(file))) {
    throw new InvalidArgumentError(ErrorCode.INVALID_OPTION, `${file} exists: pass --force to replace it`);
  }
  const bitmap = DirtyBitmap.create(opts.size, opts.granularity);
  if (opts.allDirty) bitmap.markAll();
  const header = await saveBitmap(file, bitmap);
  if (opts.json) emitEvent('bitmap-created', describe(file, header, bitmap.count(), bitmap.dirtyBytes()));
  else process.stdout.write(`created ${file}: ${header.bitCount} bits of ${formatBytes(header.granularity)}, ${bitmap.count()} dirty\n`);
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}
