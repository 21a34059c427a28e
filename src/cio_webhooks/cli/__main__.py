"""``python -m cio_webhooks.cli``: the ``cio-webhooks`` command."""

from . import main

if __name__ == "__main__":
    main()
