"""``send``: sign example events and POST them to a receiver."""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import click

from .._exceptions import ConfigError
from .._service import stored_key
from ..settings import DATA_DIR, HOST, PORT, env
from ..signature import signed_headers
from ._errors import ExitCode, err
from ._serve import signing_keys, webhook_url

__all__ = ["send"]


@click.command()
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option("--url", default=webhook_url(HOST, PORT), show_default=True, envvar=env("URL"))
@click.option(
    "--signing-key",
    envvar=[env("SIGNING_KEY"), env("SIGNING_KEYS")],
    help="[default: the first of CIO_WEBHOOKS_SIGNING_KEYS, else the key serve generated]",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DATA_DIR,
    show_default=True,
    envvar=env("DATA_DIR"),
    help="Where serve keeps the key it generated.",
)
@click.option("--timestamp", type=int, help="Sign with this timestamp instead of now.")
def send(
    files: tuple[Path, ...],
    url: str,
    signing_key: str | None,
    data_dir: Path,
    timestamp: int | None,
) -> None:
    """Sign FILES (one event each, sent byte for byte) and POST them to --url."""
    key = _send_key(signing_key, data_dir)
    failures = 0
    for path in files:
        body = path.read_bytes()
        headers = signed_headers(body, key, timestamp=timestamp or int(time.time()))
        if not url.startswith(("http://", "https://")):
            raise click.BadParameter("must be an http(s) URL", param_hint="--url")
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                status, answer = response.status, response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            status, answer = exc.code, exc.read().decode("utf-8", "replace")
        except (urllib.error.URLError, OSError) as exc:
            err.print(f"[red]{path}: cannot reach {url}: {getattr(exc, 'reason', exc)}[/]")
            sys.exit(ExitCode.FAILED)
        ok = 200 <= status < 300
        failures += not ok
        click.echo(f"{path}: {status} {answer.strip()}")
    sys.exit(ExitCode.FAILED if failures else ExitCode.OK)


def _send_key(signing_key: str | None, data_dir: Path) -> str:
    if signing_key is not None:
        return signing_keys((signing_key,))[0]
    key = stored_key(data_dir)
    if key is None:
        raise ConfigError(
            f"no signing key: pass --signing-key, or run serve once to generate one in {data_dir}"
        )
    return key
