"""The gRPC face: thin handlers that convert, authorise, call the job service, and map errors.

Handlers are registered by hand (not through the generated ``add_..._to_server``) for two reasons:
stream responses may be pre-serialized bytes, so a revision fanned out to a thousand watchers is
encoded once; and request bytes are checked (size, well-formedness) before parsing, so oversized or
malformed requests get an ErrorInfo like every other error.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from inferencegateway.gateway.v1 import gateway_pb2 as pb

from gateway import allocator, metrics
from gateway.api.auth import DEFAULT_TENANT, Authenticator
from gateway.api.convert import (
    delivery_to_proto,
    encode_watch_jobs_job,
    encode_watch_update,
    filter_from_proto,
    heartbeat_bytes,
    job_to_proto,
    jobs_heartbeat_bytes,
    result_into,
    submit_from_proto,
    with_resume_token,
)
from gateway.api.gate import Rejected as _Rejected  # what the deserializer hands over instead of a request it refused
from gateway.api.status import abort
from gateway.api.upload import MAX_CHUNK_BYTES, check_request, receive
from gateway.backends.base import TakesUploads
from gateway.errors import Code, FieldViolation, GatewayError, InvalidArgument, ResourceExhausted, Unavailable
from gateway.hub import HubClosed
from gateway.service import Heartbeat, JobService, Update
from gateway.store.uploads import remove

__all__ = ["SERVICE_NAME", "GatewayServicer"]

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["GatewayService"].full_name
_WATCH_UPDATE = "watch_update"  # a revision with the segments it added
_WATCH_WHOLE = "watch_whole"  # a revision with every segment
_WATCH_JOBS = "watch_jobs"
# Fetch answers this long before the call's deadline, so that "not done yet" arrives as an answer.
_DEADLINE_MARGIN_SECONDS = 0.5


class _Admitted:
    """A Submit request parsed within the in-flight byte budget, and the bytes it holds of it. The
    message is what ``submit_from_proto`` made of it (or the error it raised, for after the token
    check): the parsed protobuf, one more copy of the payload, is gone before the handler runs."""

    __slots__ = ("message", "size")

    def __init__(self, message: Any, size: int) -> None:
        self.message = message
        self.size = size


_TRIM_AFTER_BYTES = 1024 * 1024  # the last large Submit in flight done: freed heap goes back to the system

# The largest request of every RPC but Submit (the receive limit for them, when max_receive_bytes is
# larger). The largest a caller has a use for is about 70 KB: a List or WatchJobs filter on 64
# labels (as many as a job can carry) of 63-character keys and 256-character values all of 4-byte
# characters, with a page or resume token (under 200 bytes). Beyond this a request is refused
# REQUEST_TOO_LARGE before it is parsed, so a tenant's call costs at most its received bytes, briefly,
# never a parsed map of millions of labels.
SMALL_REQUEST_BYTES = 256 * 1024


class _InflightBytes:
    """The bytes of Submit requests being parsed, checked and stored at once. Each holds a few copies of
    its payload (the received bytes, the parsed message, the stored form), so without a bound thirty
    20 MiB uploads take gigabytes; beyond the bound a request is refused before it is even parsed (a
    request alone may always pass, whatever its size, up to max_receive_bytes)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._lock = threading.Lock()  # grpc may parse on its own threads

    def take(self, size: int) -> bool:
        with self._lock:
            if self.held and self.held + size > self.limit:
                return False
            self.held += size
            return True

    def give_back(self, size: int) -> None:
        with self._lock:
            self.held -= size
            idle = self.held == 0
        if idle and size >= _TRIM_AFTER_BYTES:
            allocator.trim()


def _serialize(message: Any) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


def _deserializer(cls: Any, limit: int) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        if len(data) > limit:
            return _Rejected(ResourceExhausted(
                f"the request is {len(data)} bytes, over the limit of {limit}",
                reason="REQUEST_TOO_LARGE",
                metadata={"limit_bytes": str(limit), "size_bytes": str(len(data))},
            ))
        try:
            return cls.FromString(data)
        except (DecodeError, RecursionError, ValueError) as exc:
            return _Rejected(InvalidArgument(f"the request could not be parsed: {exc}", reason="MALFORMED_REQUEST"))
    return parse


def _submit_deserializer(limit: int, inflight: _InflightBytes) -> Callable[[bytes], Any]:
    parse = _deserializer(pb.SubmitRequest, limit)

    def admit(data: bytes) -> Any:
        size = len(data)
        if size <= limit and not inflight.take(size):
            return _Rejected(ResourceExhausted(
                f"{inflight.held} bytes of Submit requests are being processed, the limit (max_inflight_submit_bytes); "
                "retry shortly", reason="SUBMIT_BYTES_IN_FLIGHT",
                metadata={"limit_bytes": str(inflight.limit), "size_bytes": str(size)}, retry_after=1.0,
            ))
        message = parse(data)
        del data  # (the caller's reference goes when this returns)
        if isinstance(message, _Rejected):
            if size <= limit:
                inflight.give_back(size)
            return message
        try:
            converted: Any = submit_from_proto(message)
        except GatewayError as exc:
            converted = exc
        return _Admitted(converted, size)

    return admit


def _internal(exc: BaseException) -> GatewayError:
    log.exception("unexpected error", exc_info=exc)
    return GatewayError("internal error; see the server log", "INTERNAL", Code.INTERNAL)


class GatewayServicer:
    def __init__(self, service: JobService, auth: Authenticator, max_receive_bytes: int,
                 max_inflight_submit_bytes: int = 256 * 1024 * 1024, spool_dir: Path | None = None) -> None:
        self.service = service
        self.auth = auth
        self.max_receive_bytes = max_receive_bytes
        self.spool_dir = spool_dir or Path(tempfile.gettempdir())  # where Uploads are written as they arrive
        self.inflight = _InflightBytes(max_inflight_submit_bytes)

    # -- plumbing --------------------------------------------------------------------------------

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
        """The tenant of a call's metadata; raises Unauthenticated (the receive gate asks before reading
        any call's message)."""
        return self.auth.tenant_from_metadata(metadata) if self.auth.enabled else DEFAULT_TENANT

    @staticmethod
    def received_size(request: Any) -> int:
        """The received bytes of a Submit's message, as its deserializer left it (the receive gate asks)."""
        return request.size if isinstance(request, _Admitted) else 0

    def _tenant(self, request: Any, context: grpc.aio.ServicerContext) -> str:
        if isinstance(request, _Rejected):
            raise request.error
        if not self.auth.enabled:
            return DEFAULT_TENANT
        return self.auth.tenant_from_metadata(context.invocation_metadata())

    def _unary(self, method: Callable[[Any, str, Any], Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await method(request, self._tenant(request, context), context)
            except GatewayError as exc:
                await abort(context, exc)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await abort(context, _internal(exc))

        return handler

    def _stream(self, method: Callable[[Any, str, Any], AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def handler(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                async for item in method(request, self._tenant(request, context), context):
                    yield item
            except GatewayError as exc:
                await abort(context, exc)
            except HubClosed:
                await abort(context, Unavailable("the gateway is shutting down; resume the stream", reason="SHUTTING_DOWN"))
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await abort(context, _internal(exc))

        return handler

    def handler(self) -> grpc.GenericRpcHandler:
        small = min(self.max_receive_bytes, SMALL_REQUEST_BYTES)

        def unary(fn: Any, req: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(fn), request_deserializer=_deserializer(req, small), response_serializer=_serialize,
            )

        def stream(fn: Any, req: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(fn), request_deserializer=_deserializer(req, small), response_serializer=_serialize,
            )

        submit = self._unary(self.submit)

        async def admitted_submit(request: Any, context: grpc.aio.ServicerContext) -> Any:
            size = 0
            if isinstance(request, _Admitted):
                size, request = request.size, request.message
            try:
                return await submit(request, context)
            finally:
                if size:
                    self.inflight.give_back(size)

        handlers = {
            "Submit": grpc.unary_unary_rpc_method_handler(
                admitted_submit, request_deserializer=_submit_deserializer(self.max_receive_bytes, self.inflight),
                response_serializer=_serialize,
            ),
            "Upload": grpc.stream_unary_rpc_method_handler(
                self._unary(self.upload), request_deserializer=_deserializer(pb.UploadRequest, MAX_CHUNK_BYTES + 1024),
                response_serializer=_serialize,
            ),
            "Get": unary(self.get, pb.GetRequest),
            "Watch": stream(self.watch, pb.WatchRequest),
            "Fetch": unary(self.fetch, pb.FetchRequest),
            "Cancel": unary(self.cancel, pb.CancelRequest),
            "Delete": unary(self.delete, pb.DeleteRequest),
            "List": unary(self.list, pb.ListRequest),
            "WatchJobs": stream(self.watch_jobs, pb.WatchJobsRequest),
            "Retry": unary(self.retry, pb.RetryRequest),
        }
        return grpc.method_handlers_generic_handler(SERVICE_NAME, handlers)

    # -- the RPCs --------------------------------------------------------------------------------

    async def submit(self, request: Any, tenant: str, context: Any) -> pb.SubmitResponse:
        converted = submit_from_proto(request) if isinstance(request, pb.SubmitRequest) else request
        if isinstance(converted, GatewayError):
            raise converted
        route, job_input, labels, request_id, webhook, deadlines, priority = converted
        job, existing = await self.service.submit(tenant, route, job_input, labels, request_id, webhook, deadlines,
                                                  priority)
        return pb.SubmitResponse(job=await self._job(job, stored=existing), existing=existing)

    async def upload(self, requests: AsyncIterator[Any], tenant: str, context: Any) -> pb.UploadResponse:
        """See gateway.api.upload (the caller is authenticated, from the headers, before a message is read)."""
        try:
            received = await receive(requests, self.spool_dir, self._upload_limit)
        except GatewayError as refused:  # (counted here: the service never saw it)
            metrics.SUBMITS_REFUSED.labels("", refused.reason).inc()
            raise
        try:
            try:
                problem = check_request(received.request)
                if problem is not None:
                    raise problem
                route, job_input, labels, request_id, webhook, deadlines, priority = submit_from_proto(received.request)
            except GatewayError as refused:
                known = received.request.route if received.request.route in self.service.routes else ""
                metrics.SUBMITS_REFUSED.labels(known, refused.reason).inc()
                raise
            assert job_input.transcription is not None  # (check_request)
            job_input = replace(job_input, transcription=replace(
                job_input.transcription, audio_upload=received.sha256, audio_file=received.path))
            job, existing = await self.service.submit(tenant, route, job_input, labels, request_id, webhook,
                                                      deadlines, priority)
            return pb.UploadResponse(job=await self._job(job, stored=existing), existing=existing)
        finally:
            remove(received.path)  # unless the store took it (then it is gone from here already)

    def _upload_limit(self, route: str | None) -> int:
        """The most audio bytes ``route`` takes by Upload; None: the most any route takes. With a shared
        store, which holds an upload in memory until its job ends, also the route's max_queued_bytes: an
        upload that could never be queued is refused as it arrives, not sent to Redis to be refused."""
        routes = self.service.routes.values() if route is None else [self.service.route(route)]
        limits = [self._route_upload_limit(r) for r in routes if isinstance(r.backend, TakesUploads)]
        if not limits:
            raise InvalidArgument.fields(FieldViolation(
                "submit.route", "takes no uploads: only whisper routes take audio" if route else "no route takes uploads"),
                reason="UPLOAD_NOT_SUPPORTED")
        return max(limits)

    def _route_upload_limit(self, route: Any) -> int:
        limit: int = route.backend.max_upload_bytes
        queued = route.settings.max_queued_bytes  # (0: no limit)
        return min(limit, queued) if self.service.store.shared and queued else limit

    async def _job(self, job: Any, with_segments: bool = True, stored: bool = True) -> pb.Job:
        """The job as Get shows it: with its webhook's delivery state, if it has a webhook (a job
        just created has none stored yet: pending)."""
        message = job_to_proto(job, with_segments)
        state = await self.service.webhook_delivery(job) if stored else ({} if job.webhook is not None else None)
        if state is not None:
            message.webhook_delivery.CopyFrom(delivery_to_proto(state))
        return message

    async def get(self, request: pb.GetRequest, tenant: str, context: Any) -> pb.GetResponse:
        return pb.GetResponse(job=await self._job(await self.service.get(tenant, request.job_id)))

    async def watch(self, request: pb.WatchRequest, tenant: str, context: Any) -> AsyncIterator[bytes]:
        async for item in self.service.watch(tenant, request.job_id, request.after_revision):
            if isinstance(item, Update):
                event = item.event
                if item.whole:
                    yield event.encoded(_WATCH_WHOLE, partial(encode_watch_update, whole=True))
                else:
                    yield event.encoded(_WATCH_UPDATE, encode_watch_update)
            else:
                yield heartbeat_bytes(item.revision, item.time)

    async def fetch(self, request: pb.FetchRequest, tenant: str, context: Any) -> pb.FetchResponse:
        wait: float | None = None
        if request.HasField("timeout"):
            timeout = request.timeout
            if timeout.seconds < 0 or timeout.nanos < 0:
                raise InvalidArgument.fields(FieldViolation("timeout", "must not be negative"))
            wait = timeout.seconds + timeout.nanos / 1e9 or None
            remaining = context.time_remaining()
            if wait is not None and remaining is not None:
                wait = max(0.0, min(wait, remaining - min(_DEADLINE_MARGIN_SECONDS, remaining / 10)))
        job, result = await self.service.fetch(tenant, request.job_id, wait)
        response = pb.FetchResponse(job=await self._job(job, with_segments=False))
        result_into(response, result)
        return response

    async def cancel(self, request: pb.CancelRequest, tenant: str, context: Any) -> pb.CancelResponse:
        return pb.CancelResponse(job=job_to_proto(await self.service.cancel(tenant, request.job_id)))

    async def retry(self, request: pb.RetryRequest, tenant: str, context: Any) -> pb.RetryResponse:
        job, existing = await self.service.retry(tenant, request.job_id, self.spool_dir)
        return pb.RetryResponse(job=await self._job(job, stored=existing), existing=existing)

    async def delete(self, request: pb.DeleteRequest, tenant: str, context: Any) -> pb.DeleteResponse:
        await self.service.delete(tenant, request.job_id, force=request.force)
        return pb.DeleteResponse()

    async def list(self, request: pb.ListRequest, tenant: str, context: Any) -> pb.ListResponse:
        flt = filter_from_proto(request.states, request.route, request.labels)
        jobs, token = await self.service.list(tenant, flt, request.page_size, request.page_token)
        return pb.ListResponse(jobs=[job_to_proto(j, with_segments=False) for j in jobs], next_page_token=token)

    async def watch_jobs(self, request: pb.WatchJobsRequest, tenant: str, context: Any) -> AsyncIterator[bytes]:
        flt = filter_from_proto(request.states, request.route, request.labels)
        async for item in self.service.watch_jobs(tenant, flt, request.resume_token):
            if isinstance(item, Heartbeat):
                yield jobs_heartbeat_bytes(item.time, self.service.resume_token(item.position))
            else:
                event, position = item
                yield with_resume_token(event.encoded(_WATCH_JOBS, encode_watch_jobs_job),
                                        self.service.resume_token(position))
