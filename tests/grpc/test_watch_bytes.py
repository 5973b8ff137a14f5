"""Watch over the wire (raw gRPC, as any language's stub sees it): updates carry only the segments
they add, so a watcher's bytes grow with the transcript, not with its square; a watcher that resumes
after any revision rebuilds exactly the same transcript."""

from __future__ import annotations

import grpc
from inferencegateway.gateway.v1 import gateway_pb2 as pb
from inferencegateway.gateway.v1 import gateway_pb2_grpc as pb_grpc

from harness import FIXTURES, ServerProcess


def _follow(stub: pb_grpc.GatewayServiceStub, job_id: str, after: int = 0,
            transcript: list[pb.Segment] | None = None) -> tuple[list[pb.Segment], list[tuple[int, int, int]]]:
    """Watches to the end; answers the rebuilt transcript and (revision, message bytes, segments held)."""
    segments = list(transcript or [])
    seen = []
    for response in stub.Watch(pb.WatchRequest(job_id=job_id, after_revision=after), timeout=120):
        if response.WhichOneof("event") != "update":
            continue
        update = response.update
        assert update.segments_offset <= len(segments), "an update starts past what the watcher holds"
        segments = segments[: update.segments_offset] + list(update.job.segments)
        seen.append((update.job.revision, response.ByteSize(), len(segments)))
    return segments, seen


def test_watch_bytes_grow_with_the_transcript_and_resume_rebuilds_it(whisper_server: ServerProcess) -> None:
    whisper_server.wait_serving("route/whisper")
    audio = (FIXTURES / "long.ogg").read_bytes()
    with grpc.insecure_channel(whisper_server.target) as channel:
        stub = pb_grpc.GatewayServiceStub(channel)
        request = pb.SubmitRequest(route="whisper", transcription=pb.TranscriptionRequest(audio=audio))
        job = stub.Submit(request, timeout=60).job
        transcript, seen = _follow(stub, job.id)
        fetched = stub.Fetch(pb.FetchRequest(job_id=job.id), timeout=30)
        assert fetched.job.done and fetched.job.state == pb.JOB_STATE_SUCCEEDED
        assert [s.text for s in transcript] == [s.text for s in fetched.transcript.segments]
        assert len(transcript) >= 8, "the fixture should give many segments"

        # Bytes: the transcript once, plus a small job header per update (no segment is sent twice).
        sent = sum(size for _, size, _ in seen)
        header = max(pb.WatchResponse(update=pb.JobUpdate(job=fetched.job)).ByteSize(), 200)
        assert sent <= fetched.transcript.ByteSize() + header * len(seen), (sent, len(seen))
        # Every segment came in exactly one message (the old contract resent each in every later one).
        assert seen[-1][2] == len(transcript)

        # Resuming after any revision (with what the watcher held then) ends with the same transcript.
        for revision, _, held in seen[:-1]:
            resumed, _ = _follow(stub, job.id, after=revision, transcript=transcript[:held])
            assert resumed == transcript, f"resumed after revision {revision}"

        # Get and a fresh Watch carry the whole job.
        assert list(stub.Get(pb.GetRequest(job_id=job.id), timeout=30).job.segments) == transcript
        whole, first = _follow(stub, job.id)
        assert whole == transcript and len(first) == 1
