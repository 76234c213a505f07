/**
 * SocketReader's bound on read-ahead: it pauses a socket nobody reads, streams payloads into
 * their buffers as they arrive, and never starves a read that needs more than the bound.
 */
import { connect, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { SocketReader } from '../../src/io/nbd/SocketReader.js';
import { useScratchDir } from '../helpers/scratch.js';

const scratch = useScratchDir();
const cleanup: (() => void)[] = [];
afterEach(() => {
  for (const f of cleanup.splice(0)) f();
});

/** A connected pair: `near` is read by a SocketReader, `far` writes to it. */
async function pair(readAheadBytes: number): Promise<{ reader: SocketReader; far: Socket }> {
  const path = join(await scratch(), 'p.sock');
  const accepted = new Promise<Socket>((resolve) => {
    const server: Server = createServer(resolve);
    server.listen(path);
    cleanup.push(() => server.close());
  });
  const far = connect({ path });
  const near = await accepted;
  cleanup.push(() => {
    near.destroy();
    far.destroy();
  });
  return { reader: new SocketReader(near, { readAheadBytes }), far };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('SocketReader', () => {
  it('pauses the socket once more than the read-ahead is buffered and nobody reads, and resumes for a read', async () => {
    const { reader, far } = await pair(64 * 1024);
    const block = Buffer.alloc(1 << 20, 7);
    for (let i = 0; i < 16; i++) far.write(block);
    await sleep(100);
    expect(reader.buffered).toBeGreaterThan(64 * 1024);
    expect(reader.buffered).toBeLessThan(64 * 1024 + 256 * 1024); // one socket read past the bound at most
    expect(far.writableLength).toBeGreaterThan(8 << 20); // the writer waits on its side
    const all = Buffer.alloc(16 << 20);
    await reader.readInto(all);
    expect(all.every((b) => b === 7)).toBe(true);
  });

  it('serves a read longer than the read-ahead (no deadlock), and streams readInto and skip', async () => {
    const { reader, far } = await pair(1024);
    const data = Buffer.alloc(256 * 1024);
    for (let i = 0; i < data.length; i++) data[i] = i & 0xff;
    far.write(data);
    far.write(data);
    far.write(data);
    const header = await reader.read(100 * 1024); // a plain read: buffered until whole
    expect(header.equals(data.subarray(0, 100 * 1024))).toBe(true);
    await reader.skip(156 * 1024);
    const into = Buffer.alloc(256 * 1024);
    await reader.readInto(into);
    expect(into.equals(data)).toBe(true);
    const rest = Buffer.alloc(256 * 1024);
    await reader.readInto(rest);
    expect(rest.equals(data)).toBe(true);
    expect(reader.buffered).toBe(0);
  });

  it('rejects a read the peer ends in the middle of, and reads after that', async () => {
    const { reader, far } = await pair(1024);
    far.end(Buffer.alloc(10));
    await expect(reader.readInto(Buffer.alloc(20))).rejects.toThrow('the peer closed the connection');
    await expect(reader.read(4)).rejects.toThrow('the peer closed the connection');
  });
});
