# Copyright (c) mmrefseg contributors. All rights reserved.
"""The ``free_port`` fixture (tests/conftest.py) reserves its port: other port-0 binds never
get it, while the test's own TCPStore server (a process group's rendezvous) binds it."""
import socket
from datetime import timedelta

from torch.distributed import TCPStore


def test_reserved_port_is_not_handed_out_again(free_port):
    seen = set()
    for _ in range(2000):  # ephemeral binds, as another process's free-port lookup does
        with socket.socket() as s:
            s.bind(('127.0.0.1', 0))
            seen.add(s.getsockname()[1])
    assert free_port not in seen


def test_reserved_port_takes_the_rendezvous(free_port):
    store = TCPStore('127.0.0.1', free_port, 1, is_master=True,
                     timeout=timedelta(seconds=10))
    store.set('key', 'value')
    client = TCPStore('127.0.0.1', free_port, 1, is_master=False,
                      timeout=timedelta(seconds=10))
    assert client.get('key') == b'value'
