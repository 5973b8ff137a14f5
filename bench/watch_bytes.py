"""Section ``watch_bytes``: the bytes a Watch stream sends one watcher, now and before API v1.

A real whisper job runs in a real gateway process; one watcher follows it from the start over gRPC
and counts every message's bytes as they arrive (the protobuf payload plus gRPC's 5-byte message
header; HTTP/2 framing left out). The baseline is the contract before API v1, where every update
carried the whole transcript so far: for each revision the watcher received, the same job encoded
with all its segments, measured on the same revisions of the same run. The watcher rebuilds the
transcript from the updates' offsets, and the section checks it against Fetch's.

Inputs: the long speech fixture (52.6 s, Ogg/Opus), with and without word timestamps, and one hour of speech made by repeating it
(encoded to Ogg/Opus at 24 kbit/s, about 11 MB). ``--quick`` replaces the hour with five minutes.
"""

from __future__ import annotations

import argparse
import sys
import time

from bench.common import ROOT, GatewayServer, Row
from harness.audio import repeated_speech

NAME = "watch_bytes"
FIXTURES = ROOT / "tests" / "fixtures"
CONFIG = '[routes.whisper]\nbackend = "whisper"\n'
GRPC_HEADER = 5  # compressed flag + length, before every message


def _log(message: str) -> None:
    print(f"[watch_bytes] {message}", file=sys.stderr, flush=True)


def watch_one(target: str, audio: bytes, words: bool = False) -> dict[str, float]:
    """Submits the audio, watches the job to its end counting bytes, checks the rebuilt transcript."""
    import grpc
    from inferencegateway.gateway.v1 import gateway_pb2 as pb

    service = "/inferencegateway.gateway.v1.GatewayService/"
    with grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", -1),
                                                ("grpc.max_send_message_length", -1)]) as channel:
        submit = channel.unary_unary(service + "Submit", request_serializer=pb.SubmitRequest.SerializeToString,
                                     response_deserializer=pb.SubmitResponse.FromString)
        watch = channel.unary_stream(service + "Watch", request_serializer=pb.WatchRequest.SerializeToString,
                                     response_deserializer=lambda raw: raw)  # the bytes as they came
        fetch = channel.unary_unary(service + "Fetch", request_serializer=pb.FetchRequest.SerializeToString,
                                    response_deserializer=pb.FetchResponse.FromString)
        started = time.perf_counter()
        job = submit(pb.SubmitRequest(route="whisper", transcription=pb.TranscriptionRequest(audio=audio, word_timestamps=words)),
                     timeout=120).job
        sent = before = messages = updates = 0
        transcript: list[pb.Segment] = []
        for raw in watch(pb.WatchRequest(job_id=job.id), timeout=3600):
            sent += len(raw) + GRPC_HEADER
            messages += 1
            response = pb.WatchResponse.FromString(raw)
            if response.WhichOneof("event") != "update":
                before += len(raw) + GRPC_HEADER  # heartbeats cost the same either way
                continue
            updates += 1
            update = response.update
            assert update.segments_offset <= len(transcript), "a gap in the segments"
            transcript = transcript[: update.segments_offset] + list(update.job.segments)
            whole = pb.Job()
            whole.CopyFrom(update.job)
            del whole.segments[:]
            whole.segments.extend(transcript)
            old = pb.WatchResponse(update=pb.JobUpdate(job=whole)).SerializeToString()
            before += len(old) + GRPC_HEADER
        elapsed = time.perf_counter() - started
        result = fetch(pb.FetchRequest(job_id=job.id), timeout=60)
        assert result.job.state == pb.JOB_STATE_SUCCEEDED, result.job
        assert [s.text for s in transcript] == [s.text for s in result.transcript.segments], "transcripts differ"
        return {
            "bytes": sent, "bytes_before": before, "messages": messages, "updates": updates,
            "segments": len(transcript), "transcript_bytes": result.transcript.ByteSize(),
            "audio_s": result.transcript.duration_seconds, "elapsed_s": elapsed,
        }


def run(args: argparse.Namespace) -> list[Row]:
    from bench.whisper import _wait_serving

    long_clip = (FIXTURES / "long.ogg").read_bytes()
    hour = 300.0 if args.quick else 3600.0
    inputs = [("long speech fixture (52.6 s)", long_clip, False),
              ("long speech fixture, word timestamps", long_clip, True)]
    _log(f"encoding {hour:.0f} s of speech")
    inputs.append((f"{hour / 60:.0f} min of speech", repeated_speech(long_clip, hour), False))
    rows = []
    with GatewayServer(CONFIG) as gateway:
        _wait_serving(gateway.target)
        for label, audio, words in inputs:
            _log(f"{label}: {len(audio) / 1e6:.1f} MB, transcribing and watching")
            figures = watch_one(gateway.target, audio, words)
            _log(f"{label}: {figures}")
            rows.append(Row(
                f"bytes per watcher, {label}", "KiB", figures["bytes"] / 1024, figures["bytes_before"] / 1024,
                goal="grows with the transcript",
                met=figures["bytes"] <= 3 * figures["transcript_bytes"] + 200 * figures["messages"],
                note=(f"{figures['updates']} updates, {figures['segments']} segments; the transcript itself is "
                      f"{figures['transcript_bytes'] / 1024:.0f} KiB; baseline: the same revisions, each with "
                      "every segment so far (before API v1)"),
                raw=figures,
            ))
    return rows
