"""Settings: defaults, the TOML file, environment variables, flags, and what is refused."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.settings import EchoRoute, OctoAIRoute, Settings, WhisperRoute, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No GATEWAY_* variable of the caller's shell leaks into these tests."""
    for name in list(os.environ):
        if name.upper().startswith("GATEWAY_"):
            monkeypatch.delenv(name)
    yield


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    settings = load_settings()
    assert settings.listen == "127.0.0.1:50051"
    assert settings.http_listen == "127.0.0.1:8080"
    assert settings.retention_seconds == 86400
    assert settings.data_dir == Path("data")
    assert settings.auth.enabled is False and settings.auth.tokens == {}
    assert list(settings.routes) == ["echo", "whisper"]
    assert isinstance(settings.routes["echo"], EchoRoute)
    assert isinstance(settings.routes["whisper"], WhisperRoute)
    assert settings.routes["whisper"].max_queue == 64 and settings.routes["echo"].workers == 1024
    assert Settings() == settings


def test_defaults_are_not_shared_between_instances() -> None:
    a, b = Settings(), Settings()
    assert a.routes is not b.routes and a.auth is not b.auth


def test_toml_file(tmp_path: Path) -> None:
    path = write(tmp_path, """
listen = "0.0.0.0:6000"
http_listen = ""
retention_seconds = 60
data_dir = "/var/lib/gateway"

[auth]
enabled = true
[auth.tokens]
tok-a = "alpha"

[routes.fast]
backend = "echo"
workers = 3
max_queue = 7

[routes.speech]
backend = "whisper"
model = "tiny"
device = "cpu"
beam_size = 2

[routes.upstream]
backend = "octoai"
endpoint = "https://example.invalid/predict"
""")
    settings = load_settings(path)
    assert settings.listen == "0.0.0.0:6000" and settings.http_listen == ""
    assert settings.retention_seconds == 60 and settings.data_dir == Path("/var/lib/gateway")
    assert settings.auth.enabled and settings.auth.tokens == {"tok-a": "alpha"}
    # A [routes] table replaces the defaults: exactly the routes it names.
    assert list(settings.routes) == ["fast", "speech", "upstream"]
    fast, speech, upstream = settings.routes["fast"], settings.routes["speech"], settings.routes["upstream"]
    assert isinstance(fast, EchoRoute) and fast.workers == 3 and fast.max_queue == 7
    assert isinstance(speech, WhisperRoute) and speech.model == "tiny" and speech.beam_size == 2
    assert isinstance(upstream, OctoAIRoute) and upstream.endpoint.endswith("/predict")


def test_a_routes_table_with_only_echo_drops_whisper(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, '[routes.echo]\nbackend = "echo"\n'))
    assert list(settings.routes) == ["echo"]


def test_toml_without_routes_keeps_the_default_routes(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "retention_seconds = 5\n"))
    assert list(settings.routes) == ["echo", "whisper"] and settings.retention_seconds == 5


def test_environment_overrides_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, """
retention_seconds = 60
listen = "127.0.0.1:7000"
[auth]
enabled = false
[auth.tokens]
tok = "tenant"
""")
    monkeypatch.setenv("GATEWAY_RETENTION_SECONDS", "120")
    monkeypatch.setenv("GATEWAY_AUTH__ENABLED", "true")
    settings = load_settings(path)
    assert settings.retention_seconds == 120
    assert settings.auth.enabled is True
    assert settings.auth.tokens == {"tok": "tenant"}  # nested tables merge: the file's tokens stay
    assert settings.listen == "127.0.0.1:7000"  # untouched by the environment


def test_environment_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_RETENTION_SECONDS", "7")
    monkeypatch.setenv("GATEWAY_AUTH__ENABLED", "1")
    monkeypatch.setenv("GATEWAY_ROUTES", '{"solo": {"backend": "echo", "workers": 2}}')
    settings = load_settings()
    assert settings.retention_seconds == 7 and settings.auth.enabled
    assert list(settings.routes) == ["solo"] and settings.routes["solo"].workers == 2


def test_flags_override_environment_and_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, 'retention_seconds = 60\nlisten = "127.0.0.1:7000"\ndata_dir = "from-file"\n')
    monkeypatch.setenv("GATEWAY_RETENTION_SECONDS", "120")
    monkeypatch.setenv("GATEWAY_LISTEN", "127.0.0.1:8000")
    settings = load_settings(path, retention_seconds=5, listen="127.0.0.1:9000", data_dir=None, log_level=None)
    assert settings.retention_seconds == 5 and settings.listen == "127.0.0.1:9000"
    assert settings.data_dir == Path("from-file")  # a flag left out (None) does not override
    assert settings.log_level == "INFO"
    no_file = load_settings(None, listen="127.0.0.1:9001")
    assert no_file.listen == "127.0.0.1:9001" and no_file.retention_seconds == 120


@pytest.mark.parametrize("name", ["Echo", "with space", "-lead", "_lead", "x" * 64, "dot.ted", "", "ünï"])
def test_bad_route_names_are_refused(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, f'[routes."{name}"]\nbackend = "echo"\n')
    with pytest.raises(ValidationError, match="route name"):
        load_settings(path)


@pytest.mark.parametrize("name", ["a", "echo-2", "v1_large", "0", "x" * 63])
def test_good_route_names(tmp_path: Path, name: str) -> None:
    settings = load_settings(write(tmp_path, f'[routes."{name}"]\nbackend = "echo"\n'))
    assert list(settings.routes) == [name]


@pytest.mark.parametrize("text", [
    "bogus = 1\n",
    "[auth]\nenabled = true\nbogus = 1\n",
    '[routes.echo]\nbackend = "echo"\nbogus = 1\n',
    '[routes.echo]\nbackend = "echo"\nbeam_size = 3\n',  # a whisper key on an echo route
    '[routes.echo]\nbackend = "nope"\n',
    "[routes.echo]\nworkers = 2\n",  # no backend
    '[routes.up]\nbackend = "octoai"\n',  # octoai needs an endpoint
])
def test_unknown_keys_and_bad_routes_are_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(ValidationError):
        load_settings(write(tmp_path, text))


@pytest.mark.parametrize("text", [
    "retention_seconds = 0\n",
    "retention_seconds = -1\n",
    'listen = "nohostport"\n',
    'listen = "127.0.0.1:"\n',
    'sqlite_synchronous = "OFF"\n',
    '[routes.echo]\nbackend = "echo"\nworkers = 0\n',
    '[routes.w]\nbackend = "whisper"\nbeam_size = 21\n',
    '[routes.w]\nbackend = "whisper"\ndevice = "tpu"\n',
])
def test_out_of_range_values_are_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(ValidationError):
        load_settings(write(tmp_path, text))


@pytest.mark.parametrize("address", ["127.0.0.1:0", "0.0.0.0:50051", "[::1]:50051", "localhost:8080", ":8080"])
def test_good_addresses(address: str) -> None:
    assert load_settings(listen=address).listen == address


def test_bad_environment_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_RETENTION_SECONDS", "soon")
    with pytest.raises(ValidationError):
        load_settings()


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "absent.toml")


def test_invalid_configuration_makes_serve_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    path = write(tmp_path, "bogus = 1\n")
    assert main(["serve", "--config", str(path)]) == 2
    assert "invalid configuration" in capsys.readouterr().err


def test_a_trailing_newline_is_not_a_valid_route_name(tmp_path: Path) -> None:
    path = write(tmp_path, '[routes."echo\\n"]\nbackend = "echo"\n')
    with pytest.raises(ValidationError, match="route name"):
        load_settings(path)


def test_tokens_come_from_a_mounted_file(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text('{"file-token": "team-b"}')
    config = tmp_path / "gateway.toml"
    config.write_text(f'[auth]\nenabled = true\ntokens_file = "{tokens}"\n[auth.tokens]\n"inline" = "team-a"\n')
    auth = load_settings(config).auth
    assert auth.tokens == {"inline": "team-a", "file-token": "team-b"}
    for bad in ("[1, 2]", "not json", '{"t": 3}'):
        tokens.write_text(bad)
        with pytest.raises(ValidationError, match="tokens_file"):
            load_settings(config)
    tokens.unlink()
    with pytest.raises(ValidationError, match="tokens_file"):
        load_settings(config)


SECRET_A = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECRET_B = "whsec_c2Vjb25kLXNlY3JldC1vZi10ZW5hbnQtYg=="


def test_webhook_settings_from_the_environment_with_a_rotation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_WEBHOOKS__ALLOWED_PREFIXES", '["https://hooks.example.com/"]')
    monkeypatch.setenv("GATEWAY_WEBHOOKS__SECRET_ENV", "HOOK_SECRETS")
    monkeypatch.setenv("HOOK_SECRETS", f"{SECRET_A} {SECRET_B}")  # both sign while receivers move to B
    assert load_settings().webhooks.resolved("any") == (["https://hooks.example.com/"], [], [SECRET_A, SECRET_B])
    monkeypatch.delenv("GATEWAY_WEBHOOKS__SECRET_ENV")
    monkeypatch.setenv("GATEWAY_WEBHOOKS__SECRET", SECRET_A)
    assert load_settings().webhooks.resolved("any")[2] == [SECRET_A]


def test_a_tenants_webhook_keys_replace_only_what_they_name(tmp_path: Path) -> None:
    config = write(tmp_path, f"""
[webhooks]
allowed_prefixes = ["https://shared.example.com/"]
allowed_networks = ["10.0.0.0/8"]
secret = "{SECRET_A}"
[webhooks.tenants.team-b]
allowed_prefixes = ["https://b.example.com/hooks/"]
secret = ["{SECRET_A}", "{SECRET_B}"]
""")
    hooks = load_settings(config).webhooks
    assert hooks.resolved("team-a") == (["https://shared.example.com/"], ["10.0.0.0/8"], [SECRET_A])
    assert hooks.resolved("team-b") == (["https://b.example.com/hooks/"], ["10.0.0.0/8"], [SECRET_A, SECRET_B])


@pytest.mark.parametrize(("table", "complaint"), [
    ('allowed_prefixes = ["https://h.example.com/"]', "no secret signs them"),
    ('allowed_prefixes = ["https://h.example.com/"]\nsecret = "not-a-whsec"', "whsec_"),
    ('allowed_prefixes = ["https://h.example.com/"]\nsecret = "whsec_c2hvcnQ="', "at least 16 bytes"),
    (f'allowed_prefixes = ["ftp://h.example.com/"]\nsecret = "{SECRET_A}"', "not an http(s) URL prefix"),
    (f'allowed_prefixes = ["https://[bad/"]\nsecret = "{SECRET_A}"', "not an http(s) URL prefix"),
    (f'allowed_networks = ["10.0.0.0/33"]\nsecret = "{SECRET_A}"', "not a network"),
])
def test_unusable_webhook_settings_are_refused(tmp_path: Path, table: str, complaint: str) -> None:
    with pytest.raises(ValidationError, match=complaint.replace("(", r"\(").replace(")", r"\)")):
        load_settings(write(tmp_path, "[webhooks]\n" + table + "\n"))


OPERATORS = """
[auth]
enabled = true
[auth.tokens]
"tok-ops-5d0e" = "ops"
"tok-bob-91c2" = "bob"
"tok-eve-0b7a" = "eve"
[tenants.carol]
weight = 2
[tenants.default]
weight = 1
"""


def test_operators_view_the_tenants_they_list_and_star_is_every_named_tenant(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, OPERATORS + '[auth.operators.ops]\ntenants = ["*"]\nactions = true\n'
                                              '[auth.operators.eve]\ntenants = ["bob", "eve"]\n'))
    assert settings.auth.operators["ops"].actions is True and settings.auth.operators["eve"].actions is False
    assert settings.viewable_tenants("ops") == ["bob", "carol", "eve"]  # tokens' and [tenants.*]'s, not default
    assert settings.viewable_tenants("eve") == ["bob"]  # its own is not "another"
    assert settings.viewable_tenants("bob") == []
    off = settings.model_copy(update={"auth": settings.auth.model_copy(update={"enabled": False})})
    assert off.viewable_tenants("ops") == []  # auth off: one tenant


def test_operators_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GATEWAY_AUTH__OPERATORS", '{"ops": {"tenants": ["bob"], "actions": true}}')
    settings = load_settings(write(tmp_path, OPERATORS))
    assert settings.viewable_tenants("ops") == ["bob"] and settings.auth.operators["ops"].actions


def test_an_operators_tenants_may_come_from_the_tokens_file(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text('{"tok-dan-44e1": "dan"}')
    config = OPERATORS.replace("[auth.tokens]", f'tokens_file = "{tokens}"\n[auth.tokens]')
    settings = load_settings(write(tmp_path, config + '[auth.operators.dan]\ntenants = ["ops"]\n'))
    assert settings.viewable_tenants("dan") == ["ops"]


@pytest.mark.parametrize(("operators", "message"), [
    ('[auth.operators.ops]\ntenants = ["mallory"]\n', "auth.operators.ops.tenants: no token"),
    ('[auth.operators.mallory]\ntenants = ["*"]\n', "auth.operators.mallory: no token"),
    ('[auth.operators.carol]\ntenants = ["*"]\n', "auth.operators.carol: no token"),  # a [tenants] table is no token
    ('[auth.operators.ops]\ntenants = ["carol"]\n', "auth.operators.ops.tenants: no token"),
    ('[auth.operators.ops]\ntenants = ["*"]\nwrite = true\n', "Extra inputs"),
])
def test_an_operator_naming_a_tenant_no_token_maps_to_is_refused(tmp_path: Path, operators: str, message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        load_settings(write(tmp_path, OPERATORS + operators))
