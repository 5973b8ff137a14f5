// The inference gateway's Node.js client. See README.md.
export {
  GatewayClient, JobFuture, DEFAULT_TARGET, DEFAULT_TIMEOUT, DEFAULT_RETRY, CHANNEL_OPTIONS, UPLOAD_ABOVE_BYTES, registry,
  backoff, jobStateName, parseJobState, duration, resultOf, webhookEvent, uploadSeconds,
} from "./client.js";
export {
  GatewayError, RpcError, JobError, JobFailedError, JobCancelledError, codeName, statusDetails, fromServiceError,
  streamResumable,
} from "./errors.js";
export * from "../gen/inferencegateway/gateway/v1/gateway_pb.js";
