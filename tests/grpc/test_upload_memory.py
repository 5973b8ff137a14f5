"""Memory under many large uploads at once: Submits beyond the receive slots wait before gRPC reads
their messages (their bytes stay with the clients), none is refused, and once they are stored the
gateway's memory goes back to about its idle size (the store's writer keeps nothing of them)."""

from __future__ import annotations

from collections.abc import Callable

from harness import ServerProcess, wait_until
from harness.clips import wav_bytes
from harness.process import rss_mib
from harness.uploads import burst

MiB = 1024 * 1024
UPLOADS = 16
SIZE_MIB = 7
# Two receive slots: max_inflight_submit_bytes / max_receive_bytes.
CONFIG = f"""max_receive_bytes = {8 * MiB}
max_inflight_submit_bytes = {16 * MiB}
[routes.whisper]
backend = "whisper"
max_queue = 1000
"""


def test_many_large_uploads_wait_their_turn_and_leave_nothing_behind(
    make_server: Callable[..., ServerProcess],
) -> None:
    import numpy as np

    data = wav_bytes(np.full(SIZE_MIB * MiB // 2 - 32, 0.01, dtype=np.float32))
    server = make_server(CONFIG, args=("--workers", "0"))  # the Submit path alone: nothing runs the jobs
    assert server.proc is not None
    pid = server.proc.pid
    burst(server.target, data[: 1 * MiB], 1)  # warm the paths, so idle means idle after a Submit
    idle = rss_mib(pid) or 0.0
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # VmHWM from here on

    outcomes = burst(server.target, data, UPLOADS)  # (the bench's client: it would retry a refusal)
    assert outcomes == {"accepted": UPLOADS, "refused_then_retried": 0}  # waiting, not refused

    peak = (rss_mib(pid, "VmHWM") or 0.0) - idle
    # All received at once would be 16 x 7 MiB in gRPC's buffers before any copy of ours (112 MiB and
    # more); two at a time, each with its few copies, stays well under that.
    assert peak < UPLOADS * SIZE_MIB * 0.8, f"peak {peak:.0f} MiB above idle"
    # Afterwards: back within 20% of idle (allowing a few MiB of allocator slack).
    wait_until(lambda: (rss_mib(pid) or 0.0) <= idle * 1.2 + 4, "RSS back near idle", timeout=10)
