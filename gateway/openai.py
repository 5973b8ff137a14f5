"""The OpenAI-compatible speech API, a sub-app of the HTTP face: code written for OpenAI's audio API runs
against the gateway with one base URL changed (docs/openai.md).

    POST /v1/audio/transcriptions   multipart: file, model, language, prompt, response_format, temperature,
                                    timestamp_granularities[], stream
    POST /v1/audio/translations     multipart: file, model, prompt, response_format, temperature
    GET  /v1/models

``model`` names a whisper route; ``whisper-1`` (and OpenAI's other speech models' names) the default
one (the route named ``whisper``, else the first whisper route). Each call is a job like any other:
it shows in List, Watch, WatchJobs and the dashboard, labelled ``via=openai``, and its id comes back in
the ``X-Job-Id`` header, so it can be watched over gRPC too. ``response_format``: json (default), text,
srt, vtt, verbose_json (with ``words`` when ``timestamp_granularities[]`` has ``word``). ``stream=true``
answers Server-Sent Events as OpenAI's streaming transcription does: a ``transcript.text.delta`` per
segment as it is decoded, then ``transcript.text.done`` with the whole text.

Every error is OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, with the status of
the gateway's one table (400 a bad field or undecodable audio, 401 a missing or unknown token, 404 an
unknown model, 413 a file too large, 429 a full queue, 503 a route not ready).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from aiohttp import web

from gateway import subtitles
from gateway.errors import Code, FieldViolation, GatewayError, InvalidArgument, NotFound, http_status
from gateway.http.face import BEARER, Route, current_tenant, priority_of
from gateway.jobs import Job, JobInput, JobState, Transcript, TranscriptionInput
from gateway.service import JobService
from gateway.settings import Settings

__all__ = ["OpenAIFace", "error_body", "openai_error"]

FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
DEFAULT_MODELS = frozenset({"whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"})
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "invalid_request_error", 409: "invalid_request_error", 413: "invalid_request_error",
          429: "rate_limit_error"}
_PARAMS = {"audio": "file", "audio_url": "url", "language_code": "language", "beam_size": None, "task": None}
_CODES = {"MISSING_TOKEN": "invalid_api_key", "INVALID_TOKEN": "invalid_api_key", "ROUTE_NOT_FOUND": "model_not_found",
          "MODEL_NOT_FOUND": "model_not_found"}


def error_body(error: GatewayError) -> tuple[int, dict[str, Any]]:
    """OpenAI's error object for a gateway error, and the gateway's HTTP status for it."""
    status = http_status(error.code, error.reason)
    param = error.field_violations[0].field if error.field_violations else None
    if param is not None and param.startswith("transcription."):  # the typed request's fields, as the form's
        param = _PARAMS.get(param.removeprefix("transcription.").partition(".")[0], None)
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return status, {"message": error.message, "type": kind, "param": param,
                    "code": _CODES.get(error.reason, error.reason.lower())}


def openai_error(error: GatewayError) -> web.Response:
    """A gateway error in OpenAI's error shape, with the gateway's HTTP status for it."""
    status, body = error_body(error)
    headers = {"Cache-Control": "no-store"}
    if error.retry_after:
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    return web.json_response({"error": body}, status=status, headers=headers)


def _cues(transcript: Transcript) -> list[subtitles.Cue]:
    return [(s.start, s.end, s.text) for s in transcript.segments]


class OpenAIFace:
    def __init__(self, settings: Settings, service: JobService) -> None:
        self.settings = settings
        self.service = service

    def routes(self) -> Iterable[Route]:
        return [Route("POST", "/v1/audio/transcriptions", self.transcriptions, BEARER, openai_error),
                Route("POST", "/v1/audio/translations", self.translations, BEARER, openai_error),
                Route("GET", "/v1/models", self.models, BEARER, openai_error),
                Route("GET", "/v1/models/{model}", self.model, BEARER, openai_error)]

    # -- models ----------------------------------------------------------------------------------

    def _whisper_routes(self) -> list[str]:
        names = [name for name, route in self.settings.routes.items() if route.backend == "whisper"]
        return sorted(names, key=lambda n: (n != "whisper", names.index(n)))

    def _route(self, model: str) -> str:
        routes = self._whisper_routes()
        if model in DEFAULT_MODELS and routes:
            return routes[0]
        if model in routes:
            return model
        raise NotFound(f"the model {model!r} does not exist here: use whisper-1 or one of the whisper routes "
                       f"{routes}", reason="MODEL_NOT_FOUND")

    def _model_body(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": 0, "owned_by": "inference-gateway"}

    async def models(self, request: web.Request) -> web.Response:
        names = ["whisper-1", *self._whisper_routes()] if self._whisper_routes() else []
        return web.json_response({"object": "list", "data": [self._model_body(n) for n in names]})

    async def model(self, request: web.Request) -> web.Response:
        name = request.match_info["model"]
        self._route(name)
        return web.json_response(self._model_body(name))

    # -- transcriptions --------------------------------------------------------------------------

    async def transcriptions(self, request: web.Request) -> web.StreamResponse:
        return await self._speech(request, "transcribe")

    async def translations(self, request: web.Request) -> web.StreamResponse:
        return await self._speech(request, "translate")

    async def _form(self, request: web.Request) -> tuple[bytes, dict[str, list[str]]]:
        if not request.content_type.startswith("multipart/form-data"):
            raise InvalidArgument.fields(FieldViolation("file", "send multipart/form-data with a file field"))
        try:
            form = await request.post()
        except web.HTTPRequestEntityTooLarge:
            raise GatewayError(f"the request is larger than the gateway's limit of {self.settings.max_receive_bytes} "
                               "bytes (max_receive_bytes)", "REQUEST_TOO_LARGE", Code.RESOURCE_EXHAUSTED,
                               {"limitBytes": str(self.settings.max_receive_bytes)}) from None
        except ValueError as exc:
            raise InvalidArgument.fields(FieldViolation("file", f"the multipart body cannot be read: {exc}")) from None
        fields: dict[str, list[str]] = {}
        audio: bytes | None = None
        for key, value in form.items():
            if isinstance(value, web.FileField):
                if key == "file":
                    audio = value.file.read()
                continue
            fields.setdefault(key.removesuffix("[]"), []).append(str(value))
        if not audio and not fields.get("url"):
            raise InvalidArgument.fields(FieldViolation("file", "a non-empty audio file (or a url field) is required"))
        return audio or b"", fields

    @staticmethod
    def _one(fields: dict[str, list[str]], name: str, default: str = "") -> str:
        values = fields.get(name) or [default]
        return values[-1].strip()

    async def _speech(self, request: web.Request, task: str) -> web.StreamResponse:
        tenant = current_tenant()
        audio, fields = await self._form(request)
        model = self._one(fields, "model")
        if not model:
            raise InvalidArgument.fields(FieldViolation("model", "a model is required (whisper-1, or a whisper route)"))
        route = self._route(model)
        response_format = self._one(fields, "response_format", "json")
        if response_format not in FORMATS:
            raise InvalidArgument.fields(FieldViolation("response_format", f"one of {', '.join(FORMATS)}"))
        granularities = set(fields.get("timestamp_granularities", []))
        unknown = granularities - {"word", "segment"}
        if unknown:
            raise InvalidArgument.fields(FieldViolation("timestamp_granularities", f"word or segment, not {sorted(unknown)}"))
        stream = self._one(fields, "stream", "false").lower() in ("true", "1")
        if stream and task == "translate":
            raise InvalidArgument.fields(FieldViolation("stream", "translations do not stream"))
        temperature: float | None = None
        if self._one(fields, "temperature"):
            try:
                temperature = float(self._one(fields, "temperature"))
                if not 0 <= temperature <= 1:
                    raise ValueError
            except ValueError:
                raise InvalidArgument.fields(FieldViolation("temperature", "a number from 0 to 1")) from None
        prompt = self._one(fields, "prompt")
        if len(prompt) > 4096:
            raise InvalidArgument.fields(FieldViolation("prompt", "at most 4096 characters"))
        language = self._one(fields, "language")
        words = "word" in granularities
        job_input = JobInput(transcription=TranscriptionInput(audio=audio, audio_url=self._one(fields, "url"),
                                                              language=language, task=task,
                                                              word_timestamps=words, prompt=prompt,
                                                              temperature=temperature))
        priority = priority_of(request)
        try:
            job, _ = await self.service.submit(tenant, route, job_input, {"via": "openai"}, "", priority=priority)
        except InvalidArgument as exc:
            # An English-only model cannot translate, and needs not: its transcript is English already.
            if task != "translate" or not any(v.field.endswith(".task") for v in exc.field_violations):
                raise
            assert job_input.transcription is not None
            job_input = JobInput(transcription=replace(job_input.transcription, task="transcribe"))
            job, _ = await self.service.submit(tenant, route, job_input, {"via": "openai"}, "", priority=priority)
        headers = {"X-Job-Id": job.id}
        if stream:
            return await self._stream(request, tenant, job, headers)
        transcript = await self._result(tenant, job)
        return self._render(transcript, response_format, task, words, headers)

    async def _result(self, tenant: str, job: Job) -> Transcript:
        while True:  # until the job ends; the caller's own timeout (OpenAI's SDK: 10 min) bounds it
            job, result = await self.service.fetch(tenant, job.id, wait=60.0)
            if job.terminal:
                break
        if job.state is JobState.SUCCEEDED and isinstance(result, Transcript):
            return result
        raise self._failure(job)

    @staticmethod
    def _failure(job: Job) -> GatewayError:
        error = job.error
        if error is None:
            return GatewayError("the transcription ended without a result", "INTERNAL", Code.INTERNAL)
        return GatewayError(error.message, error.reason, error.code, dict(error.metadata))

    def _render(self, transcript: Transcript, response_format: str, task: str, words: bool,
                headers: dict[str, str]) -> web.Response:
        text = transcript.text.strip()
        if response_format == "text":
            return web.Response(text=text + "\n", content_type="text/plain", headers=headers)
        if response_format == "srt":
            return web.Response(text=subtitles.srt(_cues(transcript)), content_type="text/plain", headers=headers)
        if response_format == "vtt":
            return web.Response(text=subtitles.vtt(_cues(transcript)), content_type="text/vtt", headers=headers)
        if response_format == "json":
            return web.json_response({"text": text}, headers=headers)
        body: dict[str, Any] = {
            "task": "translate" if task == "translate" else "transcribe",
            "language": transcript.language, "duration": transcript.duration, "text": text,
            "segments": [{"id": i, "seek": 0, "start": s.start, "end": s.end, "text": s.text, "tokens": [],
                          "temperature": 0.0, "avg_logprob": s.avg_logprob, "compression_ratio": 0.0,
                          "no_speech_prob": s.no_speech_prob} for i, s in enumerate(transcript.segments)],
        }
        if words:
            body["words"] = [{"word": w.word.strip(), "start": w.start, "end": w.end}
                             for s in transcript.segments for w in s.words]
        return web.json_response(body, headers=headers)

    async def _stream(self, request: web.Request, tenant: str, job: Job, headers: dict[str, str]) -> web.StreamResponse:
        from gateway.service.streams import Update

        response = web.StreamResponse(headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        texts: list[str] = []

        async def send(event: dict[str, Any]) -> None:
            await response.write(f"data: {json.dumps(event, separators=(',', ':'))}\n\n".encode())

        final: Job | None = None
        async for item in self.service.watch(tenant, job.id):
            if not isinstance(item, Update):
                continue
            new = item.segments[max(0, len(texts) - item.segments_offset):]
            for segment in new:
                texts.append(segment.text)
                await send({"type": "transcript.text.delta", "delta": segment.text})
            if item.job.terminal:
                final = item.job
                break
        if final is not None and final.state is JobState.SUCCEEDED:
            _job, result = await self.service.fetch(tenant, job.id)
            whole = result.text.strip() if isinstance(result, Transcript) else "".join(texts).strip()
            await send({"type": "transcript.text.done", "text": whole})
        else:
            error = self._failure(final) if final is not None else GatewayError("the stream ended", "INTERNAL", Code.INTERNAL)
            await send({"type": "error", "error": error_body(error)[1]})
        await response.write_eof()
        return response
