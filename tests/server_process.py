"""What the real-server test fixtures (redis-server, etcd) share: a free port, and a process
that can be killed like a crash, restarted on the same port and data, and stopped politely."""

from __future__ import annotations

import socket
import subprocess
from abc import ABC, abstractmethod


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess(ABC):
    proc: subprocess.Popen[bytes] | None = None

    @abstractmethod
    def start(self) -> ServerProcess:
        """Start the server and return once it answers (its own command line and check)."""

    def kill(self) -> None:
        """Stop hard (SIGKILL), as a crash would: clients get no goodbye."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self) -> None:
        """Kill, then start again on the same ports and data."""
        self.kill()
        self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
