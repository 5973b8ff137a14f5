"""The direct Redis connection of the hot paths (gateway/redis/conn.py) against a real redis-server:
a pipeline's replies in order, an error reply in place as redis-py's exception (the pipeline goes on
past it), a password and a database from the URL, a lost connection as redis-py's ConnectionError, and
the same over a Unix socket and TLS (the server's certificate checked against the URL's CA)."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.exceptions import AuthenticationError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.redis.conn import RespConnection, supported
from harness.certs import Authority
from harness.redis import RedisProcess


async def test_a_pipeline_answers_in_order_with_errors_in_place(redis_process: RedisProcess) -> None:
    redis_process.flush()
    connection = RespConnection(redis_process.url)
    await connection.connect()
    try:
        answers = await connection.execute([
            ("SET", "k", "v"), ("EVALSHA", "0" * 40, 0), ("INCR", "k"), ("GET", "k"), ("RPUSH", "l", 1, 2.5, b"\x00x"),
            ("LRANGE", "l", 0, -1),
        ])
    finally:
        connection.close()
    assert answers[0] == b"OK" and answers[3] == b"v" and answers[4] == 3
    assert isinstance(answers[1], NoScriptError)  # redis-py's class: the store reloads its scripts on it
    assert isinstance(answers[2], ResponseError) and "not an integer" in str(answers[2])
    assert answers[5] == [b"1", b"2.5", b"\x00x"]


async def test_the_url_gives_the_password_and_the_database(redis_process: RedisProcess) -> None:
    redis_process.flush()
    admin = RespConnection(redis_process.url)
    await admin.connect()
    try:
        await admin.execute([("CONFIG", "SET", "requirepass", "s3cret")])
        base = redis_process.url.rsplit("/", 1)[0].replace("redis://", "redis://:s3cret@")
        connection = RespConnection(base + "/3")
        await connection.connect()
        await connection.execute([("SET", "where", "db3")])
        plain = RespConnection(base + "/0")
        await plain.connect()
        assert await plain.execute([("GET", "where"), ("SELECT", 3), ("GET", "where")]) == [None, b"OK", b"db3"]
        plain.close()
        connection.close()
        with pytest.raises(AuthenticationError):
            await RespConnection(redis_process.url.replace("redis://", "redis://:wrong@")).connect()
    finally:
        await admin.execute([("AUTH", "s3cret"), ("CONFIG", "SET", "requirepass", ""), ("FLUSHALL",)])
        admin.close()


async def test_a_lost_connection_is_redis_pys_connection_error(redis_process: RedisProcess) -> None:
    connection = RespConnection(redis_process.url)
    await connection.connect()
    await connection.execute([("CLIENT", "SETNAME", "doomed")])
    killer = RespConnection(redis_process.url)
    await killer.connect()
    await killer.execute([("CLIENT", "KILL", "SKIPME", "yes", "USER", "default")])
    killer.close()
    with pytest.raises(RedisConnectionError):
        await connection.execute([("PING",)])
    assert not connection.connected
    with pytest.raises(RedisConnectionError):
        await RespConnection("redis://127.0.0.1:1/0").connect()


def test_redis_tls_and_unix_socket_urls_are_spoken_to_directly_and_nothing_else() -> None:
    assert supported("redis://h:6379/0") and supported("rediss://h:6379/0") and supported("unix:///tmp/r.sock")
    assert not supported("http://h:6379/0") and not supported("h:6379")
    with pytest.raises(ValueError):
        RespConnection("memcached://h:11211")


@pytest.mark.parametrize("transport", ["unix", "tls"])
async def test_a_unix_socket_and_tls_carry_commands(transport: str, redis_transports: RedisProcess) -> None:
    url = redis_transports.unix_url if transport == "unix" else redis_transports.tls_url
    connection = RespConnection(url.replace("db=0", "db=3") if transport == "unix" else url.replace("/0?", "/3?"))
    await connection.connect()
    try:
        assert (connection.ssl is not None) == (transport == "tls")
        assert connection._writer is not None
        assert (connection._writer.get_extra_info("ssl_object") is not None) == (transport == "tls")
        answers = await connection.execute([("SET", f"over-{transport}", "yes"), ("GET", f"over-{transport}")])
        assert answers == [b"OK", b"yes"]
    finally:
        connection.close()
    plain = RespConnection(redis_transports.url.replace("/0", "/3"))  # the same database, over plain TCP
    await plain.connect()
    assert await plain.execute([("GET", f"over-{transport}")]) == [b"yes"]
    plain.close()


async def test_a_certificate_from_another_ca_is_refused(redis_transports: RedisProcess,
                                                        tmp_path: Path) -> None:
    other = Authority(tmp_path / "other")
    url = redis_transports.tls_url.split("?")[0] + f"?ssl_ca_certs={other.path}"
    with pytest.raises(RedisConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        await RespConnection(url).connect()


async def test_a_silent_redis_is_given_up_after_the_timeout() -> None:
    import asyncio

    from redis.exceptions import TimeoutError as RedisTimeoutError

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)  # takes the command, never answers (a partitioned or hung server)
        await asyncio.sleep(30)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        connection = RespConnection(f"redis://127.0.0.1:{port}/0", timeout=0.3)
        await connection.connect()
        with pytest.raises(RedisTimeoutError):
            await connection.execute([("PING",)])
        assert not connection.connected  # the next write reconnects rather than reading a late answer
    finally:
        server.close()
