"""moto's server, handling one request at a time.

DynamoDB applies each conditional write atomically: of two conditional writes racing on one item,
one fails its condition. moto's threaded server checks a condition and applies the write as two
steps, so two concurrent conditional writes can both pass their check and the later one silently
overwrites the earlier. The tests that race instances on one item (concurrent record appends,
principal records) rely on the atomicity DynamoDB gives, so the server used here handles each
request under one lock. Connections are still accepted concurrently.

Usage: python moto_atomic.py -H 127.0.0.1 -p PORT (the arguments of moto_server).
"""

import sys
import threading

from moto.moto_server.werkzeug_app import DomainDispatcherApplication
from moto.server import main

_lock = threading.Lock()
_dispatch = DomainDispatcherApplication.__call__


def _one_at_a_time(self, environ, start_response):
    with _lock:
        return _dispatch(self, environ, start_response)


DomainDispatcherApplication.__call__ = _one_at_a_time

if __name__ == "__main__":
    main(sys.argv[1:])
