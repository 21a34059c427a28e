"""``python -m cio_webhooks``: the ``cio-webhooks`` command."""

from .cli import main

if __name__ == "__main__":
    main()
