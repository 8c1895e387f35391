"""Pictures in the Prefect UI: an image artifact where Prefect can show one, a link in markdown otherwise.

Prefect's image artifact is a URL the UI fetches, so it only works for files behind http(s). Output on ``s3://`` or
a local folder gets a markdown artifact that names the file and links it (the UI renders what the browser can
reach). Images are never inlined as base64: every artifact lives in the Prefect database, and a run's pictures
would bloat it.
"""

from __future__ import annotations

from prefect.artifacts import create_image_artifact, create_markdown_artifact


def picture_artifact(url: str, *, key: str, title: str, caption: str, description: str | None = None) -> None:
    """Show the picture at ``url`` (an http(s) URL, a storage URI or a local path) under ``key``."""
    if url.startswith(("http://", "https://")):
        create_image_artifact(image_url=url, key=key, description=description or title)
        return
    link = url if "://" in url else f"file://{url}"
    create_markdown_artifact(f"## {title}\n\n![{title}]({link})\n\n{caption} Saved at `{url}`.", key=key,
                             description=description or title)
