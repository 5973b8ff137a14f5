"""Admission before a request is received: Submit messages being received at once, at most a number
of slots; the others wait for one before gRPC reads their message.

gRPC reads a request's message only when its handler asks for it, and the handler exists only once
the server's interceptors have answered. While a Submit waits here its bytes stay with the client,
held back by HTTP/2 flow control (a stream window's worth at most), instead of being received whole
and copied into Python before anything can refuse them. A slot is given back as soon as the message
is in if it is small (under 1 MiB), so small Submits pass through in microseconds; a large one keeps
its slot until it is stored or refused, so large uploads go through a few at a time (each costs
several times its size while it is processed: gRPC's buffer, the parsed message, the input, the
stored form) instead of being received together and refused by the byte budget after the fact. A
Submit that waits past its deadline ends as DEADLINE_EXCEEDED, having cost nothing.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

__all__ = ["LARGE_BYTES", "ReceiveGate"]

LARGE_BYTES = 1024 * 1024  # a message this large keeps its slot until its handler is done


class _Slot:
    __slots__ = ("_gate", "_loop", "_thread", "_timer")

    def __init__(self, gate: ReceiveGate, stale_after: float) -> None:
        self._gate: ReceiveGate | None = gate
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        # A call that ends before its message is in (the client went away mid-upload) never gives its
        # slot back through the deserializer: the slot comes back by itself after this long.
        self._timer = self._loop.call_later(stale_after, self.release)

    def release(self) -> None:
        if threading.get_ident() != self._thread:  # grpc may deserialize on a thread of its own
            self._loop.call_soon_threadsafe(self.release)
            return
        gate, self._gate = self._gate, None
        if gate is not None:
            self._timer.cancel()
            gate._semaphore.release()


class ReceiveGate(grpc.aio.ServerInterceptor):
    def __init__(self, method: str, slots: int, stale_after: float = 120.0) -> None:
        self.method = method
        self.slots = max(1, slots)
        self.stale_after = stale_after
        self._semaphore = asyncio.Semaphore(self.slots)

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method != self.method or handler.unary_unary is None:
            return handler
        await self._semaphore.acquire()
        slot = _Slot(self, self.stale_after)
        deserialize = handler.request_deserializer
        behavior = handler.unary_unary

        def received(data: bytes) -> Any:
            if len(data) < LARGE_BYTES:
                slot.release()  # a small message is in: it costs nothing worth waiting for
            return deserialize(data) if deserialize is not None else data

        async def gated(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await behavior(request, context)
            finally:
                slot.release()  # a large one holds its slot until it is stored (or refused)

        return grpc.unary_unary_rpc_method_handler(
            gated, request_deserializer=received, response_serializer=handler.response_serializer,
        )
