// The client's errors: one root, and the one place where gRPC's errors are translated.
//
//   GatewayError          every error of this client: .code (the gRPC status code, a number),
//   │                     .codeName ("NOT_FOUND"), .reason (the stable ErrorInfo reason), .domain,
//   │                     .metadata (ErrorInfo's, lowerCamelCase keys), .fieldViolations,
//   │                     .retryAfter (seconds, from RetryInfo, or null)
//   ├── RpcError          a call failed (.cause: the grpc-js ServiceError)
//   └── JobError          the job ended without a result: .job (its terminal revision)
//       ├── JobFailedError      it FAILED: code, reason, message are the job's error
//       └── JobCancelledError   it was CANCELLED
import { status as Status } from "@grpc/grpc-js";
import { anyIs, anyUnpack } from "@bufbuild/protobuf/wkt";
import { fromBinary } from "@bufbuild/protobuf";
import { StatusSchema } from "../gen/google/rpc/status_pb.js";
import { BadRequestSchema, ErrorInfoSchema, RetryInfoSchema } from "../gen/google/rpc/error_details_pb.js";

/** The name of a gRPC status code ("NOT_FOUND"), or its number as a string for an unknown one. */
export function codeName(code) {
  return Status[code] ?? String(code);
}

export class GatewayError extends Error {
  constructor(message, { code = Status.UNKNOWN, reason = "", domain = "", metadata = {}, fieldViolations = [],
    retryAfter = null, cause } = {}) {
    const head = reason ? `${codeName(code)} ${reason}` : codeName(code);
    super(`${head}: ${message}`, cause === undefined ? undefined : { cause });
    this.name = new.target.name;
    this.code = code;
    this.codeName = codeName(code);
    this.details = message; // the server's message alone
    this.reason = reason;
    this.domain = domain;
    this.metadata = { ...metadata };
    this.fieldViolations = fieldViolations;
    this.retryAfter = retryAfter;
  }
}

export class RpcError extends GatewayError {}

/** Reads a google.rpc.Status (a message, or its binary form) into the pieces of a GatewayError. */
export function statusDetails(status) {
  if (status instanceof Uint8Array) status = fromBinary(StatusSchema, status);
  const out = { code: status.code, message: status.message, reason: "", domain: "", metadata: {},
    fieldViolations: [], retryAfter: null };
  for (const detail of status.details ?? []) {
    if (anyIs(detail, ErrorInfoSchema)) {
      const info = anyUnpack(detail, ErrorInfoSchema);
      out.reason = info.reason;
      out.domain = info.domain;
      out.metadata = { ...info.metadata };
    } else if (anyIs(detail, BadRequestSchema)) {
      const bad = anyUnpack(detail, BadRequestSchema);
      out.fieldViolations = bad.fieldViolations.map((v) => ({ field: v.field, description: v.description }));
    } else if (anyIs(detail, RetryInfoSchema)) {
      const delay = anyUnpack(detail, RetryInfoSchema).retryDelay;
      if (delay) out.retryAfter = Number(delay.seconds) + delay.nanos / 1e9;
    }
  }
  return out;
}

/** The RpcError of a failed grpc-js call (its grpc-status-details-bin trailer when present). */
export function fromServiceError(err) {
  if (err instanceof GatewayError) return err;
  const code = typeof err?.code === "number" ? err.code : Status.UNKNOWN;
  const plain = typeof err?.details === "string" ? err.details : String(err?.message ?? err);
  const raw = err?.metadata?.get?.("grpc-status-details-bin");
  if (raw && raw.length > 0 && raw[0] instanceof Uint8Array) {
    try {
      const d = statusDetails(raw[0]);
      return new RpcError(d.message, { ...d, code, cause: err });
    } catch {
      // a malformed trailer: fall back on the plain status
    }
  }
  return new RpcError(plain, { code, cause: err });
}

export class JobError extends GatewayError {
  constructor(job, message) {
    if (job.error) {
      const d = statusDetails(job.error);
      super(message ?? d.message, d);
    } else {
      super(message ?? `job ${job.id} ended without a result`, { code: Status.UNKNOWN });
    }
    this.job = job;
  }
}

export class JobFailedError extends JobError {}

export class JobCancelledError extends JobError {
  constructor(job) {
    if (job.error) super(job);
    else {
      super({ ...job, error: undefined }, "the job was cancelled");
      this.code = Status.CANCELLED;
      this.codeName = "CANCELLED";
      this.reason = "CANCELLED";
    }
  }
}

/** Whether a cut Watch/WatchJobs stream may be opened again where it stopped. */
export function streamResumable(error) {
  if (error.code === Status.UNAVAILABLE) return true;
  return error.code === Status.INTERNAL && /RST_STREAM/.test(error.details ?? error.message);
}
