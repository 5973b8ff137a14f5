"""Bursts of large Submits, each retried on RESOURCE_EXHAUSTED as a client honouring RetryInfo would:
the upload-memory test and benchmark share them."""

from __future__ import annotations

import threading
import time

__all__ = ["burst", "padded_wav"]


def burst(target: str, data: bytes, uploads: int) -> dict[str, int]:
    """``uploads`` Submits of ``data`` to the whisper route at once: how many were accepted, and how
    many refusals were retried."""
    import grpc
    from inferencegateway.gateway.v1 import gateway_pb2 as pb
    from inferencegateway.gateway.v1 import gateway_pb2_grpc as pb_grpc

    outcomes: dict[str, int] = {"accepted": 0, "refused_then_retried": 0}
    lock = threading.Lock()
    with grpc.insecure_channel(target, options=[("grpc.max_send_message_length", -1)]) as channel:
        stub = pb_grpc.GatewayServiceStub(channel)
        request = pb.SubmitRequest(route="whisper", transcription=pb.TranscriptionRequest(audio=data))

        def one() -> None:
            for _ in range(120):
                try:
                    stub.Submit(request, timeout=120)
                    with lock:
                        outcomes["accepted"] += 1
                    return
                except grpc.RpcError as error:
                    if error.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED:
                        raise
                    with lock:
                        outcomes["refused_then_retried"] += 1
                    time.sleep(1.0)  # the RetryInfo delay

        threads = [threading.Thread(target=one) for _ in range(uploads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(600)
    return outcomes


def padded_wav(source: bytes, size: int) -> bytes:
    """The WAV ``source`` followed by silence (in its own format) up to about ``size`` bytes: speech
    that transcribes as the source does, in a file as large as a test needs."""
    import io
    import wave

    with wave.open(io.BytesIO(source)) as wav:
        params = wav.getparams()
        frames = wav.readframes(wav.getnframes())
    frame = params.nchannels * params.sampwidth
    silence = max(0, (size - len(source)) // frame) * frame
    out = io.BytesIO()
    with wave.open(out, "wb") as wav:
        wav.setparams(params)
        wav.writeframes(frames + bytes(silence))
    return out.getvalue()
