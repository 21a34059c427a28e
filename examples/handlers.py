"""An example of user handlers: `cio-webhooks serve --handlers examples.handlers:router`."""

import logging

from cio_webhooks import Event, Router

router = Router()
log = logging.getLogger("example.handlers")


@router.on("email.bounced", "*.spammed")
def note_bounce(event: Event) -> None:
    log.info("event=example_bounce person_id=%s kind=%s", event.person_id, event.kind)
