"""Admission before a request is received: Submit messages being received at once, at most a number
of slots; the others wait for one before gRPC reads their message. Only a caller that has
authenticated waits for a slot or takes one, and a slot is held by a running handler only, never
past the call's end.

gRPC reads a request's message only when its handler asks for it. So Submit, a unary method on the
wire, is served here as a client-streaming one (the wire format of both is the same: every unary
client works): its handler runs as soon as the headers are in, before the message is read, and
(1) authenticates from the headers: a stranger is refused (UNAUTHENTICATED) having read nothing and
taken nothing; (2) waits for a slot; (3) only then reads the one message. While a Submit waits its
bytes stay with the client, held back by HTTP/2 flow control (a stream window's worth at most),
instead of being received whole and copied into Python before anything can refuse them. A call
that ends in any way while it waits or is being read (cancel, deadline, reset, a header gRPC itself
refuses) has its handler cancelled by grpc.aio, and the slot comes back at that moment.

A slot is given back as soon as the message is in if it is small (under 1 MiB), so small Submits
pass through in microseconds; a large one keeps its slot until it is stored or refused, so large
uploads go through a few at a time (each costs several times its size while it is processed: gRPC's
buffer, the parsed message, the input, the stored form) instead of being received together and
refused by the byte budget after the fact. A Submit that waits past its deadline ends as
DEADLINE_EXCEEDED, having cost nothing.

Slots are shared fairly between tenants: a slot that comes free goes to the waiting Submit of the
tenant holding the fewest slots (first come first served among equals), so one tenant with many
uploads waiting does not starve another with one. With auth off everyone is one tenant: first come,
first served.

With auth on, the service's other methods are served the same way, without slots: each is
authenticated from its headers before its one message is read (a unary method is served as a
client-streaming one, a server-streaming method as a bidirectional one; the wire format is the
same). So a stranger's call is refused (UNAUTHENTICATED) having had nothing of its message received
beyond a stream window: no caller without a token makes the server buffer a message. A call that
carries no message is refused INVALID_ARGUMENT MALFORMED_REQUEST, as Submit's is. With auth off they
are left as they are.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc

from gateway.errors import GatewayError, InvalidArgument

__all__ = ["LARGE_BYTES", "ReceiveGate", "Rejected", "Slots"]

LARGE_BYTES = 1024 * 1024  # a message this large keeps its slot until its handler is done

Metadata = Sequence[tuple[str, str | bytes]] | None


class Rejected:
    """What a handler is given instead of a request that was refused before or as it was read."""

    __slots__ = ("error",)

    def __init__(self, error: GatewayError) -> None:
        self.error = error


class Slots:
    """A semaphore shared fairly between tenants (see the module's docstring)."""

    def __init__(self, count: int) -> None:
        self.count = max(1, count)
        self.free = self.count
        self.held: Counter[str] = Counter()
        self._waiting: dict[str, deque[tuple[int, asyncio.Future[None]]]] = {}
        self._order = itertools.count()  # arrival order, across tenants

    def try_take(self, tenant: str) -> bool:
        """Takes a slot at once if one is free and nobody waits for one; False otherwise."""
        if self.free and not self._waiting:
            self._grant(tenant)
            return True
        return False

    async def take(self, tenant: str) -> None:
        if self.try_take(tenant):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._waiting.setdefault(tenant, deque())
        queue.append((next(self._order), future))
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.give_back(tenant)  # granted as the call ended: it goes to the next one
            else:
                self._forget(tenant, future)
            raise

    def _forget(self, tenant: str, future: asyncio.Future[None]) -> None:
        queue = self._waiting.get(tenant)
        if queue is None:
            return
        for entry in queue:
            if entry[1] is future:
                queue.remove(entry)
                break
        if not queue:
            del self._waiting[tenant]

    def give_back(self, tenant: str) -> None:
        self.held[tenant] -= 1
        if self.held[tenant] <= 0:
            del self.held[tenant]
        self.free += 1
        self._hand_over()

    def _grant(self, tenant: str) -> None:
        self.free -= 1
        self.held[tenant] += 1

    def _hand_over(self) -> None:
        while self.free and self._waiting:
            tenant = min(self._waiting, key=lambda t: (self.held[t], self._waiting[t][0][0]))
            queue = self._waiting[tenant]
            _, future = queue.popleft()
            if not queue:
                del self._waiting[tenant]
            if not future.done():
                self._grant(tenant)
                future.set_result(None)

    def hold(self, tenant: str) -> _Held:
        """A slot for the block (``async with``); entering answers a function that gives it back early
        (once, whatever calls it)."""
        return _Held(self, tenant)


class _Held:
    """A slot of :meth:`Slots.hold`, held from ``__aenter__`` to ``__aexit__`` or ``release``, whichever is first
    (a class, not a generator: it is entered once per Submit)."""

    __slots__ = ("held", "slots", "tenant")

    def __init__(self, slots: Slots, tenant: str) -> None:
        self.slots = slots
        self.tenant = tenant
        self.held = False

    async def __aenter__(self) -> Callable[[], None]:
        if not self.slots.try_take(self.tenant):  # (the usual case without a coroutine)
            await self.slots.take(self.tenant)
        self.held = True
        return self.release

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    def release(self) -> None:
        if self.held:
            self.held = False
            self.slots.give_back(self.tenant)


async def _read_one(context: grpc.aio.ServicerContext) -> Any:
    """The call's one request message, or a Rejected when it carried none."""
    request = await context.read()
    if request is grpc.aio.EOF:  # the client sent no message
        return Rejected(InvalidArgument("the call carried no request message", reason="MALFORMED_REQUEST"))
    return request


class ReceiveGate(grpc.aio.ServerInterceptor):
    """Serves ``method`` (a unary-unary handler: the metrics interceptor's, around the servicer's) as
    described in the module's docstring, and, given ``service`` (a prefix: ``/package.Service/``),
    every other unary-unary and unary-stream method whose name starts with it: authenticated before
    its message is read. ``authenticate`` answers the tenant of a call's metadata or raises
    GatewayError; a refusal reaches the handler as :class:`Rejected`, so it is answered (and counted)
    as every other."""

    def __init__(self, method: str, slots: int, authenticate: Callable[[Metadata], str],
                 size_of: Callable[[Any], int], service: str | None = None) -> None:
        """``size_of(request)``: the received size of ``method``'s message, told by what its deserializer made
        of it (so one handler serves every call: none is made per call)."""
        self.method = method
        self.slots = Slots(slots)
        self.authenticate = authenticate
        self.service = service
        self.size_of = size_of
        # The other methods' handlers hold nothing of a call, so each is made once (per handler of the
        # metrics interceptor's, which it makes once per method), not at every call.
        self._wrapped: dict[int, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if method == self.method:
            if handler.unary_unary is None:
                return handler
            gated = self._wrapped.get(id(handler))
            if gated is None or gated[0] is not handler:
                gated = self._wrapped[id(handler)] = (handler, self._gated(handler, self.size_of))
            return gated[1]
        if self.service is None or not method.startswith(self.service):
            return handler
        cached = self._wrapped.get(id(handler))
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._authenticated_first(handler)
        self._wrapped[id(handler)] = (handler, wrapped)
        return wrapped

    async def _read_authenticated(self, context: grpc.aio.ServicerContext) -> Any:
        """The call's one message, read only once its headers authenticate; else a Rejected (read nothing)."""
        try:
            self.authenticate(context.invocation_metadata())
        except GatewayError as exc:
            return Rejected(exc)
        return await _read_one(context)

    def _authenticated_first(self, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """A unary-unary or unary-stream handler served so that it authenticates before reading."""
        read = self._read_authenticated
        if handler.unary_unary is not None:
            unary = handler.unary_unary

            async def first_unary(requests: Any, context: grpc.aio.ServicerContext) -> Any:
                return await unary(await read(context), context)

            return grpc.stream_unary_rpc_method_handler(first_unary, request_deserializer=handler.request_deserializer,
                                                        response_serializer=handler.response_serializer)
        if handler.unary_stream is not None:
            stream = handler.unary_stream

            async def first_stream(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                responses = stream(await read(context), context)
                try:
                    async for response in responses:
                        yield response
                finally:
                    aclose = getattr(responses, "aclose", None)
                    if aclose is not None:
                        await aclose()  # at once, not when collected: its metrics count the call's end

            return grpc.stream_stream_rpc_method_handler(first_stream, request_deserializer=handler.request_deserializer,
                                                         response_serializer=handler.response_serializer)
        return handler

    def _gated(self, handler: grpc.RpcMethodHandler, size_of: Callable[[Any], int]) -> grpc.RpcMethodHandler:
        """The handler of every call of the gated method: each call's size is its request's own."""
        behavior = handler.unary_unary

        async def gated(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                tenant = self.authenticate(context.invocation_metadata())
            except GatewayError as exc:
                return await behavior(Rejected(exc), context)  # read nothing, took nothing
            async with self.slots.hold(tenant) as release:
                request = await _read_one(context)
                if size_of(request) < LARGE_BYTES:
                    release()  # a small message is in (or none): it costs nothing worth waiting for
                return await behavior(request, context)  # a large one holds its slot until it is stored

        return grpc.stream_unary_rpc_method_handler(gated, response_serializer=handler.response_serializer,
                                                    request_deserializer=handler.request_deserializer)
