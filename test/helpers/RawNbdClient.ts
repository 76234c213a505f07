/**
 * A hand-driven NBD client for attacking a server with malformed input: every byte it sends is
 * chosen by the test. Built on the same SocketReader as the real client.
 */
import { connect, type Socket } from 'node:net';
import { SocketReader } from '../../src/io/nbd/SocketReader.js';
import {
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_OPT_GO,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_OPTS_MAGIC,
  NBD_REP_ACK,
  NBD_REP_INFO,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  readUInt64,
  u32,
  writeUInt64,
} from '../../src/io/nbd/protocol.js';

export interface OptionReply {
  readonly option: number;
  readonly type: number;
  readonly data: Buffer;
}

export type TransmissionReply =
  | { readonly kind: 'simple'; readonly error: number; readonly cookie: number }
  | { readonly kind: 'structured'; readonly flags: number; readonly type: number; readonly cookie: number; readonly data: Buffer };

export class RawNbdClient {
  readonly socket: Socket;
  readonly reader: SocketReader;
  readonly #closed: Promise<void>;

  private constructor(socket: Socket) {
    this.socket = socket;
    this.reader = new SocketReader(socket);
    this.#closed = new Promise((resolve) => socket.once('close', () => resolve()));
  }

  static connect(path: string): Promise<RawNbdClient> {
    return new Promise((resolve, reject) => {
      const socket = connect({ path });
      socket.once('error', reject);
      socket.once('connect', () => resolve(new RawNbdClient(socket)));
    });
  }

  /** Reads the greeting and answers fixed newstyle + no zeroes; returns the handshake flags. */
  async greet(clientFlags = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES): Promise<number> {
    const hello = await this.reader.read(18);
    const flags = hello.readUInt16BE(16);
    this.send(u32(clientFlags));
    return flags;
  }

  option(option: number, data: Buffer = Buffer.alloc(0), magic = NBD_OPTS_MAGIC): void {
    const h = Buffer.allocUnsafe(16);
    h.writeBigUInt64BE(magic, 0);
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(data.length, 12);
    this.send(Buffer.concat([h, data]));
  }

  async optionReply(): Promise<OptionReply> {
    const h = Buffer.from(await this.reader.read(20));
    const data = Buffer.alloc(h.readUInt32BE(16));
    await this.reader.readInto(data);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data };
  }

  /** Greets, optionally asks for structured replies, and enters transmission with NBD_OPT_GO. */
  async open(name: string, structured: boolean): Promise<{ size: number; flags: number }> {
    await this.greet();
    if (structured) {
      this.option(NBD_OPT_STRUCTURED_REPLY);
      if ((await this.optionReply()).type !== NBD_REP_ACK) throw new Error('no structured replies');
    }
    const n = Buffer.from(name);
    this.option(NBD_OPT_GO, Buffer.concat([u32(n.length), n, Buffer.from([0, 0])]));
    let size = -1;
    let flags = 0;
    for (;;) {
      const r = await this.optionReply();
      if (r.type === NBD_REP_ACK) return { size, flags };
      if (r.type !== NBD_REP_INFO) throw new Error(`GO failed: ${r.type >>> 0} ${r.data.toString()}`);
      if (r.data.readUInt16BE(0) === 0) {
        size = readUInt64(r.data, 2);
        flags = r.data.readUInt16BE(10);
      }
    }
  }

  /** A request header (and payload), exactly as given. */
  request(command: number, offset: number, length: number, options: { cookie?: number; flags?: number; payload?: Buffer; magic?: number } = {}): void {
    const h = Buffer.allocUnsafe(28);
    h.writeUInt32BE(options.magic ?? NBD_REQUEST_MAGIC, 0);
    h.writeUInt16BE(options.flags ?? 0, 4);
    h.writeUInt16BE(command, 6);
    h.writeUInt32BE(0, 8);
    h.writeUInt32BE(options.cookie ?? 1, 12);
    writeUInt64(h, offset, 16);
    h.writeUInt32BE(length, 24);
    this.send(options.payload ? Buffer.concat([h, options.payload]) : h);
  }

  /** The next reply (a whole structured chunk, or a simple reply without any read data). */
  async reply(): Promise<TransmissionReply> {
    const h = Buffer.from(await this.reader.read(16));
    const magic = h.readUInt32BE(0);
    if (magic === NBD_SIMPLE_REPLY_MAGIC) return { kind: 'simple', error: h.readUInt32BE(4), cookie: h.readUInt32BE(12) };
    if (magic !== NBD_STRUCTURED_REPLY_MAGIC) throw new Error(`bad reply magic ${magic.toString(16)}`);
    const length = (await this.reader.read(4)).readUInt32BE(0);
    const data = Buffer.alloc(length);
    await this.reader.readInto(data);
    return { kind: 'structured', flags: h.readUInt16BE(4), type: h.readUInt16BE(6), cookie: h.readUInt32BE(12), data };
  }

  send(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  /** Resolves true when the server closes the connection within `ms`. */
  async closedWithin(ms: number): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
    const result = await Promise.race([this.#closed.then(() => true as const), timeout]);
    clearTimeout(timer);
    return result;
  }

  destroy(): void {
    this.socket.destroy();
  }
}
