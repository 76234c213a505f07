/**
 * QMP errors as QEMU sends them: `{"error": {"class": CLASS, "desc": TEXT}}`. QEMU uses a handful
 * of classes (qapi/error.json's QapiErrorClass); almost everything is GenericError.
 */
export type QmpErrorClass = 'GenericError' | 'CommandNotFound' | 'DeviceNotActive' | 'DeviceNotFound' | 'KVMMissingCap';

/** A failure a QMP command answers with; the daemon keeps running. */
export class QmpError extends Error {
  readonly errorClass: QmpErrorClass;

  constructor(desc: string, errorClass: QmpErrorClass = 'GenericError') {
    super(desc);
    this.name = 'QmpError';
    this.errorClass = errorClass;
  }

  /** The `error` member of a reply. */
  toJSON(): { class: QmpErrorClass; desc: string } {
    return { class: this.errorClass, desc: this.message };
  }
}

/** QEMU's QERR_INVALID_PARAMETER_VALUE: "Parameter 'NAME' expects WHAT". */
export function expects(name: string, what: string): QmpError {
  return new QmpError(`Parameter '${name}' expects ${what}`);
}

/** QEMU's message when neither a BlockBackend nor a node has the name. */
export function nodeNotFound(name: string): QmpError {
  return new QmpError(`Cannot find device='${name}' nor node-name='${name}'`);
}

/** Any error as a QmpError: ours pass through, anything else becomes a GenericError with its message. */
export function toQmpError(err: unknown): QmpError {
  if (err instanceof QmpError) return err;
  return new QmpError(err instanceof Error ? err.message : String(err));
}
