"""A guard for pynetdicom associations we open as SCU: no DIMSE response is lost to a race.

pynetdicom (3.0) pauses an association's reactor thread before ``send_c_store`` waits
for the response, by clearing a checkpoint and polling ``_is_paused``. The reactor
sets ``_is_paused`` just before it passes the checkpoint, so the sender can see it
paused while it is in fact going on to take the next DIMSE message off the queue.
If the peer answers fast and the reactor thread is descheduled at that moment (a
loaded machine), the reactor takes the C-STORE *response*, logs "Received
unexpected C-STORE service message" and drops it; the sender then waits out its
DIMSE timeout and aborts a healthy association (seen here under CPU load: about one
association in three sending 250 instances to a fast local SCP).

:func:`guard_responses` makes the reactor put a response back on the queue instead,
where the waiting sender finds it. Requests from the peer are still served as
before. A response nobody claims (one that really arrived late) is dropped after
``MAX_REQUEUES`` passes, as pynetdicom would have dropped it.
"""

from __future__ import annotations

import logging
from typing import Any

from pynetdicom.association import Association

log = logging.getLogger(__name__)

MAX_REQUEUES = 200  # reactor passes (about 1 ms each)


def guard_responses(assoc: Association) -> Association:
    """Let a response the reactor takes reach the sender waiting for it; returns ``assoc``."""
    if getattr(assoc, "_pacsai_guarded", False):
        return assoc
    assoc._pacsai_guarded = True  # type: ignore[attr-defined]
    serve = assoc._serve_request

    def serve_or_requeue(msg: Any, context_id: int) -> None:
        if msg.is_valid_request:  # the peer asks something of us: pynetdicom serves it
            serve(msg, context_id)
            return
        n = getattr(msg, "_pacsai_requeues", 0)
        if n >= MAX_REQUEUES:
            serve(msg, context_id)  # nobody waits for it: pynetdicom logs and drops it
            return
        if n == 0:
            log.debug("the association reactor took a %s response; handing it back", msg.msg_type)
        msg._pacsai_requeues = n + 1
        assoc.dimse.msg_queue.put((context_id, msg))

    assoc._serve_request = serve_or_requeue  # type: ignore[method-assign]
    return assoc
