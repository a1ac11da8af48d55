"""A TCP proxy that holds every byte for a fixed delay: a network link between two hosts.

A replica that replicates through it lags its primary by the delay, as across a network.
``cut()`` SIGKILLs the proxy, dropping what is still in flight on the link, as when the
primary's host dies. On one host a SIGKILLed primary still hands its last writes to the
replica (the kernel delivers what the dead process had written to the socket), so without
this a failover test on loopback cannot see what asynchronous replication loses.

It runs as a process of its own (``python -m workshop.delay_proxy TARGET_PORT DELAY_MS``), so
the delay does not depend on who else holds a Python interpreter's lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time


class DelayProxy:
    """127.0.0.1:``port`` → 127.0.0.1:``target_port``, each direction delayed by ``delay_ms``."""

    def __init__(self, target_port: int, delay_ms: float) -> None:
        self.target_port = target_port
        self.delay_ms = delay_ms
        self.port = 0
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> DelayProxy:
        """Start it; returns once it listens."""
        self._process = subprocess.Popen(  # noqa: S603 - our own argv, no shell
            [
                sys.executable,
                "-m",
                "workshop.delay_proxy",
                str(self.target_port),
                str(self.delay_ms),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line.strip().isdigit():
            self.cut()
            raise RuntimeError("the delay proxy did not start")
        self.port = int(line)
        return self

    def cut(self) -> None:
        """SIGKILL it: every connection through it drops, with what was in flight."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(5)

    close = cut


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def send() -> None:
        with contextlib.suppress(OSError):
            while True:
                due, chunk = await queue.get()
                if not chunk:
                    break
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                writer.write(chunk)
                await writer.drain()
        writer.close()

    sender = asyncio.ensure_future(send())
    with contextlib.suppress(OSError):
        while chunk := await reader.read(65536):
            queue.put_nowait((time.monotonic() + delay_s, chunk))
    queue.put_nowait((0.0, b""))
    await sender


async def _serve(target_port: int, delay_s: float) -> None:
    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pipe(reader, up_writer, delay_s), _pipe(up_reader, writer, delay_s))

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


def main() -> None:
    """``python -m workshop.delay_proxy TARGET_PORT DELAY_MS``: prints its port, then serves."""
    asyncio.run(_serve(int(sys.argv[1]), float(sys.argv[2]) / 1000))


if __name__ == "__main__":
    main()
