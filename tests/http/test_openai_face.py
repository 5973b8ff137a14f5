"""The OpenAI-compatible speech API (gateway/openai.py, docs/openai.md) with OpenAI's own Python SDK.

Every call is made as a user makes it, with the official `openai==3.63.0` client (in a venv of its own, see
harness/openai_sdk.py) and only ``base_url`` changed, against a real gateway with the whisper route (tiny.en):
transcriptions in every response format, translations, the models, streaming, the job behind each call (its id
in ``X-Job-Id``, visible over gRPC), and the errors as the SDK raises them (auth and the size limit on a
gateway of their own).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway_client import Client, JobState
from harness import FIXTURES, WHISPER_CONFIG, ServerProcess
from harness.openai_sdk import run_sdk

WAV = str(FIXTURES / "seashells.wav")
LONG = str(FIXTURES / "long.ogg")
TOKEN, TENANT = "tok-a", "tenant-a"
LIMIT = 200_000  # max_receive_bytes of the secured gateway; seashells.wav (80 kB) fits, BIG does not
SECURED_CONFIG = f"max_receive_bytes = {LIMIT}\n" + WHISPER_CONFIG + f'[auth]\nenabled = true\ntokens = {{"{TOKEN}" = "{TENANT}"}}\n'

SRT_TIME = r"(\d\d):(\d\d):(\d\d),(\d{3})"
VTT_TIME = r"(\d\d):(\d\d):(\d\d)\.(\d{3})"


def seconds(h: str, m: str, s: str, ms: str) -> float:
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000


def sdk(server: ServerProcess, snippet: str, api_key: str = "sk-anything", **kwargs: Any) -> dict[str, Any]:
    """``run_sdk`` with ``wav`` and ``long`` in ``args``; fails on an exception the snippet let through."""
    out = run_sdk(server.http_url, snippet, api_key, args={"wav": WAV, "long": LONG, **kwargs.pop("args", {})}, **kwargs)
    assert "error" not in out, out
    return out


def sdk_error(server: ServerProcess, snippet: str, api_key: str = "sk-anything", **kwargs: Any) -> dict[str, Any]:
    """The exception the SDK raised running ``snippet`` (``err(exc)`` of harness/openai_sdk.py)."""
    out = run_sdk(server.http_url, snippet, api_key, args={"wav": WAV, "long": LONG, **kwargs.pop("args", {})}, **kwargs)
    assert "error" in out, out
    return dict(out["error"])


# -- transcriptions --------------------------------------------------------------------------------


def test_transcription_json(whisper_server: ServerProcess) -> None:
    out = sdk(whisper_server, '''
r = client.audio.transcriptions.create(file=open(args["wav"], "rb"), model="whisper-1")
out["type"], out["text"] = type(r).__name__, r.text
''')
    assert out["type"] == "Transcription"
    assert "seashells" in out["text"].lower()


@pytest.mark.parametrize("response_format", ["text", "srt", "vtt"])
def test_transcription_text_formats(whisper_server: ServerProcess, response_format: str) -> None:
    out = sdk(whisper_server, '''
r = client.audio.transcriptions.create(file=open(args["wav"], "rb"), model="whisper-1", response_format=args["format"])
out["type"], out["body"] = type(r).__name__, r
''', args={"format": response_format})
    assert out["type"] == "str"
    body: str = out["body"]
    assert "seashells" in body.lower()
    if response_format == "text":
        assert body.strip().lower().startswith("she sells seashells")
        assert "-->" not in body
        return
    if response_format == "srt":
        cue = re.search(rf"^1\r?\n{SRT_TIME} --> {SRT_TIME}\r?\n(.+)$", body, re.M)
    else:
        assert body.startswith("WEBVTT")
        cue = re.search(rf"^{VTT_TIME} --> {VTT_TIME}\r?\n(.+)$", body, re.M)
    assert cue is not None, body
    start, end = seconds(*cue.groups()[0:4]), seconds(*cue.groups()[4:8])
    assert 0 <= start < end <= 2.6, body
    assert "seashells" in cue.group(9).lower()


def test_transcription_verbose_json_with_words_and_segments(whisper_server: ServerProcess) -> None:
    out = sdk(whisper_server, '''
r = client.audio.transcriptions.create(file=open(args["wav"], "rb"), model="whisper-1", response_format="verbose_json",
                                       timestamp_granularities=["word", "segment"])
out["type"] = type(r).__name__
out["body"] = dump(r)
out["first"] = {"start": r.segments[0].start, "end": r.segments[0].end, "text": r.segments[0].text}
out["words"] = [{"word": w.word, "start": w.start, "end": w.end} for w in r.words]
''')
    assert out["type"] == "TranscriptionVerbose"
    body = out["body"]
    assert body["language"] in ("en", "english")  # the gateway writes the code (docs/openai.md), OpenAI the name
    assert body["duration"] == pytest.approx(2.5, abs=0.15)
    assert "seashells" in body["text"].lower()
    first = out["first"]
    assert 0 <= first["start"] < first["end"] <= body["duration"] + 0.05
    assert "seashells" in first["text"].lower()
    words = out["words"]
    assert words, body
    assert all(w["start"] <= w["end"] for w in words), words
    assert [w["start"] for w in words] == sorted(w["start"] for w in words)
    assert any("seashells" in w["word"].lower() for w in words), words


def test_language_prompt_and_temperature_are_accepted(whisper_server: ServerProcess) -> None:
    out = sdk(whisper_server, '''
r = client.audio.transcriptions.create(file=open(args["wav"], "rb"), model="whisper-1", language="en",
                                       prompt="A tongue twister about the seaside.", temperature=0)
out["text"] = r.text
''')
    assert "seashells" in out["text"].lower()


def test_a_whisper_route_by_its_own_name(whisper_server: ServerProcess) -> None:
    out = sdk(whisper_server, 'out["text"] = client.audio.transcriptions.create(file=open(args["wav"], "rb"), model="whisper").text')
    assert "seashells" in out["text"].lower()


# -- translations ----------------------------------------------------------------------------------


def test_translation(whisper_server: ServerProcess) -> None:
    out = sdk(whisper_server, '''
r = client.audio.translations.create(file=open(args["wav"], "rb"), model="whisper-1")
out["type"], out["text"] = type(r).__name__, r.text
v = client.audio.translations.create(file=open(args["wav"], "rb"), model="whisper-1", response_format="verbose_json")
out["verbose"] = dump(v)
''')
    assert out["type"] == "Translation"
    assert "seashells" in out["text"].lower()
    assert out["verbose"]["task"] == "translate"
    assert "seashells" in out["verbose"]["text"].lower()


# -- models ----------------------------------------------------------------------------------------


def test_models_list_and_retrieve(whisper_server: ServerProcess) -> None:
    out = sdk(whisper_server, '''
out["ids"] = [m.id for m in client.models.list()]
m = client.models.retrieve("whisper-1")
out["model"] = {"type": type(m).__name__, "id": m.id, "object": m.object, "owned_by": m.owned_by}
try:
    client.models.retrieve("no-such-model")
except openai.NotFoundError as exc:
    out["missing"] = err(exc)
''')
    assert "whisper-1" in out["ids"]
    assert "whisper" in out["ids"]  # the route, by its own name
    assert out["model"] == {"type": "Model", "id": "whisper-1", "object": "model", "owned_by": "inference-gateway"}
    assert out["missing"]["status_code"] == 404
    assert out["missing"]["code"] == "model_not_found"


# -- streaming -------------------------------------------------------------------------------------


def test_streaming_transcription(whisper_server: ServerProcess) -> None:
    out = sdk(whisper_server, '''
started = time.monotonic()
out["events"] = []
for event in client.audio.transcriptions.create(file=open(args["long"], "rb"), model="whisper-1", stream=True):
    out["events"].append({"class": type(event).__name__, **dump(event)})
out["seconds"] = time.monotonic() - started
''', timeout=240)
    events = out["events"]
    assert events, out
    types = [e["type"] for e in events]
    deltas = [e["delta"] for e in events if e["type"] == "transcript.text.delta"]
    assert types[-1] == "transcript.text.done", types
    assert types.count("transcript.text.done") == 1
    assert set(types[:-1]) == {"transcript.text.delta"}, types
    assert len(deltas) >= 2, events  # long.ogg is minutes of speech: a delta per segment, well before done
    done = events[-1]
    assert done["class"] == "TranscriptionTextDoneEvent"  # the SDK parsed each event into its own type
    assert {e["class"] for e in events[:-1]} == {"TranscriptionTextDeltaEvent"}
    assert done["text"] == "".join(deltas).strip()
    expected = Path(FIXTURES / "long.txt").read_text().lower()
    for word in ("quick brown fox", "umbrella", "library"):
        assert word in expected and word in done["text"].lower(), done["text"]


# -- the job behind each call ----------------------------------------------------------------------


def test_x_job_id_names_a_job_visible_over_grpc(whisper_server: ServerProcess) -> None:
    out = sdk(whisper_server, '''
raw = client.audio.transcriptions.with_raw_response.create(file=open(args["wav"], "rb"), model="whisper-1")
out["job_id"] = raw.headers["x-job-id"]
out["status"] = raw.status_code
out["text"] = raw.parse().text
''')
    assert out["status"] == 200
    assert "seashells" in out["text"].lower()
    with Client(whisper_server.target) as client:
        job = client.get(out["job_id"])
    assert job.id == out["job_id"]
    assert job.state is JobState.SUCCEEDED
    assert job.route == "whisper"
    assert job.labels.get("via") == "openai"


# -- errors as the SDK raises them -----------------------------------------------------------------


def test_unknown_model_is_not_found(whisper_server: ServerProcess) -> None:
    error = sdk_error(whisper_server, 'client.audio.transcriptions.create(file=open(args["wav"], "rb"), model="no-such-model")')
    assert error["type"] == "NotFoundError", error
    assert error["status_code"] == 404
    assert error["code"] == "model_not_found"
    assert error["error_type"] == "invalid_request_error"


def test_a_text_file_is_a_bad_request(whisper_server: ServerProcess) -> None:
    error = sdk_error(whisper_server, 'client.audio.transcriptions.create(file=open(args["text"], "rb"), model="whisper-1")',
                      args={"text": str(FIXTURES / "long.txt")})
    assert error["type"] == "BadRequestError", error
    assert error["status_code"] == 400
    assert error["param"] == "file"
    assert error["error_type"] == "invalid_request_error"


@pytest.mark.parametrize(("field", "value"), [("response_format", "diarized_json"), ("temperature", 2)])
def test_a_bad_field_is_a_bad_request_naming_it(whisper_server: ServerProcess, field: str, value: Any) -> None:
    error = sdk_error(whisper_server, 'client.audio.transcriptions.create(file=open(args["wav"], "rb"), model="whisper-1", '
                                      '**{args["field"]: args["value"]})', args={"field": field, "value": value})
    assert error["type"] == "BadRequestError", error
    assert error["param"] == field


def test_a_language_the_model_lacks_names_the_language_field(whisper_server: ServerProcess) -> None:
    error = sdk_error(whisper_server, 'client.audio.transcriptions.create(file=open(args["wav"], "rb"), model="whisper-1", '
                                      'language="fr")')
    assert error["type"] == "BadRequestError", error
    assert error["param"] == "language"


@pytest.fixture(scope="module")
def secured_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A gateway of its own with auth on (one token) and a small max_receive_bytes."""
    server = ServerProcess(tmp_path_factory.mktemp("openai-secured"), SECURED_CONFIG).start()
    server.wait_serving("route/whisper")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    """300 kB of WAV, over the secured gateway's max_receive_bytes."""
    path = tmp_path_factory.mktemp("openai-big") / "big.wav"
    audio = (FIXTURES / "seashells_44k_stereo.wav").read_bytes()
    path.write_bytes(audio[:300_000])
    assert path.stat().st_size == 300_000 > LIMIT
    return str(path)


def test_a_wrong_key_is_an_authentication_error(secured_server: ServerProcess, big_file: str) -> None:
    for snippet in ('client.audio.transcriptions.create(file=open(args["wav"], "rb"), model="whisper-1")',
                    'client.models.list()',
                    # a body over the limit from a stranger: refused for the key, before the body is read
                    'client.audio.transcriptions.create(file=open(args["big"], "rb"), model="whisper-1")'):
        error = sdk_error(secured_server, snippet, "sk-wrong", args={"big": big_file})
        assert error["type"] == "AuthenticationError", (snippet, error)
        assert error["status_code"] == 401
        assert error["code"] == "invalid_api_key"
        assert error["error_type"] == "authentication_error"


def test_the_right_key_works(secured_server: ServerProcess) -> None:
    out = sdk(secured_server, '''
raw = client.audio.transcriptions.with_raw_response.create(file=open(args["wav"], "rb"), model="whisper-1")
out["job_id"], out["text"] = raw.headers["x-job-id"], raw.parse().text
out["ids"] = [m.id for m in client.models.list()]
''', TOKEN)
    assert "seashells" in out["text"].lower()
    assert "whisper-1" in out["ids"]
    with Client(secured_server.target, token=TOKEN) as client:
        job = client.get(out["job_id"])  # the token's tenant owns it
    assert job.state is JobState.SUCCEEDED
    assert job.labels.get("via") == "openai"


def test_a_file_over_max_receive_bytes_is_413(secured_server: ServerProcess, big_file: str) -> None:
    error = sdk_error(secured_server, 'client.audio.transcriptions.create(file=open(args["big"], "rb"), model="whisper-1")',
                      TOKEN, args={"big": big_file})
    assert "APIStatusError" in error["bases"], error
    assert error["type"] == "APIStatusError"  # the SDK has no class of its own for 413
    assert error["status_code"] == 413
    assert error["error_type"] == "invalid_request_error"
    assert str(LIMIT) in error["body"]["message"]
