"""Units of the job model: the state machine, the input and result encodings, job ids."""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import Code
from gateway.jobs import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    IllegalTransition,
    Job,
    JobFailure,
    JobInput,
    JobOutput,
    JobState,
    Segment,
    Transcript,
    TranscriptionInput,
    Word,
    _sorted_json,
    check_transition,
    compact_json,
    decode_result,
    encode_result,
    new_job_id,
)

Q, R, S, F, C = JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED

ALLOWED = {
    (Q, R), (Q, F), (Q, C),
    (R, S), (R, F), (R, C),
    (Q, Q), (R, R),  # same-state progress updates of an active job
}
ALL_PAIRS = list(itertools.product(JobState, JobState))


def test_states_partition() -> None:
    assert ACTIVE_STATES | TERMINAL_STATES == set(JobState)
    assert not ACTIVE_STATES & TERMINAL_STATES
    assert [s.terminal for s in JobState] == [False, False, True, True, True]


@pytest.mark.parametrize(("current", "new"), sorted(ALLOWED), ids=lambda s: s.name)
def test_allowed_transitions(current: JobState, new: JobState) -> None:
    check_transition(current, new)  # does not raise


@pytest.mark.parametrize(
    ("current", "new"), [p for p in ALL_PAIRS if p not in ALLOWED], ids=lambda s: s.name
)
def test_every_other_transition_is_illegal(current: JobState, new: JobState) -> None:
    with pytest.raises(IllegalTransition):
        check_transition(current, new)


def test_json_input_round_trip() -> None:
    job_input = JobInput(inputs={"delay_ms": 5, "text": "a\nb", "nested": {"x": [1, 2.5, None, True]}})
    encoded = job_input.encode()
    assert encoded.count(b"\n") == 1 and encoded.endswith(b"\n")  # the header's newline is escaped
    assert JobInput.decode(encoded) == job_input


def test_encode_is_stable() -> None:
    a = JobInput(inputs={"b": 1, "a": 2})
    b = JobInput(inputs={"a": 2, "b": 1})
    assert a.encode() == b.encode()


@pytest.mark.parametrize("audio", [
    b"",
    b"\n",
    b"\n\n\nRIFF\n\x00\xff\n",
    bytes(range(256)) * 4,
])
def test_transcription_input_round_trip_with_newlines_in_audio(audio: bytes) -> None:
    job_input = JobInput(transcription=TranscriptionInput(
        audio=audio, language="de", task="translate", beam_size=3, word_timestamps=True, vad_filter=False,
    ))
    decoded = JobInput.decode(job_input.encode())
    assert decoded == job_input
    assert decoded.transcription is not None and decoded.transcription.audio == audio
    assert decoded.inputs is None


def test_transcription_input_defaults_round_trip() -> None:
    job_input = JobInput(transcription=TranscriptionInput(audio=b"\nabc\n"))
    decoded = JobInput.decode(job_input.encode())
    assert decoded == job_input and decoded.transcription is not None
    assert decoded.transcription.vad_filter is None


def test_empty_input_round_trip() -> None:
    assert JobInput.decode(JobInput().encode()) == JobInput()


def test_output_result_round_trip() -> None:
    for value in ({"a": [1, 2, {"b": None}], "s": "x\ny"}, [1, 2], "text", 3.5, None, True):
        result = JobOutput(value)
        assert decode_result(encode_result(result)) == result


def test_transcript_result_round_trip() -> None:
    transcript = Transcript(
        text=" hello world",
        segments=(
            Segment(0.0, 1.5, " hello", avg_logprob=-0.25, no_speech_prob=0.01,
                    words=(Word(0.0, 0.7, " hel", 0.9), Word(0.7, 1.5, "lo", 0.8))),
            Segment(1.5, 2.0, " world"),
        ),
        language="en",
        duration=2.0,
        language_probability=0.97,
    )
    decoded = decode_result(encode_result(transcript))
    assert decoded == transcript
    assert isinstance(decoded, Transcript) and decoded.segments[0].words[1].word == "lo"


def test_segment_and_failure_dicts_round_trip() -> None:
    segment = Segment(1.0, 2.0, "x", words=(Word(1.0, 2.0, "x", 0.5),))
    assert Segment.from_dict(segment.to_dict()) == segment
    failure = JobFailure(Code.ABORTED, "TOO_MANY_ATTEMPTS", "gave up", {"attempts": "4"})
    assert JobFailure.from_dict(failure.to_dict()) == failure


def test_new_job_id_shape_and_uniqueness() -> None:
    ids = {new_job_id(1_700_000_000.0) for _ in range(1000)}
    assert len(ids) == 1000
    for job_id in ids:
        assert len(job_id) == 32 and int(job_id, 16) >= 0
        assert job_id.startswith(f"{1_700_000_000_000:012x}")


def test_new_job_id_sorts_by_time() -> None:
    times = [0.0, 0.01, 1.0, 1_700_000_000.0, 1_700_000_000.01, 1_700_000_001.5, 4_000_000_000.0]
    ids = [new_job_id(t) for t in times]
    assert ids == sorted(ids)
    # The random tail never breaks the order between distinct milliseconds (10 ms apart here, so
    # float rounding of t * 1000 cannot merge two of them).
    later = [new_job_id(1_700_000_000.0 + i / 100) for i in range(200)]
    assert later == sorted(later)


def _a_job() -> Job:
    return Job(id="0" * 32, tenant="t", route="echo", state=JobState.QUEUED, revision=1, created=1.5,
               labels={"a": "b"}, request_id="r")


def _another_value(field: dataclasses.Field[object], value: object) -> object:
    if field.name == "state":
        return JobState.RUNNING
    if field.name == "error":
        return JobFailure(Code.INTERNAL, "X", "x")
    if field.name == "segments":
        return (Segment(0.0, 1.0, "hi"),)
    if field.name == "labels":
        return {"c": "d"}
    if field.name == "webhook":
        return None
    if isinstance(value, bool) or value is None:
        return 7.25
    if isinstance(value, (int, float)):
        return value + 3
    return f"{value}-changed"


@pytest.mark.parametrize("field", dataclasses.fields(Job), ids=lambda f: f.name)
def test_evolve_is_dataclasses_replace_for_every_field(field: dataclasses.Field[object]) -> None:
    """Job.evolve is straight-line code made from the fields: changing any one of them (or two) gives what
    dataclasses.replace gives, and leaves the original as it was."""
    job = _a_job()
    value = _another_value(field, getattr(job, field.name))
    changes = {field.name: value, "revision": 9} if field.name != "revision" else {"revision": 9}
    evolved = job.evolve(**changes)
    assert evolved == dataclasses.replace(job, **changes)
    assert getattr(evolved, field.name) == changes.get(field.name, value) and job == _a_job()
    assert job.evolve() == job and job.evolve() is not job
    with pytest.raises(dataclasses.FrozenInstanceError):
        evolved.revision = 10  # type: ignore[misc]


def test_evolve_refuses_a_field_a_job_does_not_have() -> None:
    with pytest.raises(TypeError, match="no field 'revison'"):
        _a_job().evolve(revison=2)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(_JSON)
def test_the_json_encoders_write_what_json_dumps_writes(value: Any) -> None:
    """compact_json and the sorted one (request hashes, stored inputs) use CPython's C encoder made once:
    the text is json.dumps's, to the byte (a changed byte would change every request hash)."""
    assert compact_json(value) == json.dumps(value, separators=(",", ":"))
    assert _sorted_json(value) == json.dumps(value, separators=(",", ":"), sort_keys=True)


def test_the_json_encoders_refuse_what_json_refuses() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        compact_json({"a": object()})
