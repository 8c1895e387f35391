"""Secret redaction: the copy of a config (or any JSON-like value) that manifests, artifacts and logs may show."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel


_SECRET_KEY = re.compile(
    r"secret|passw(or)?d|credential|authoriz|private[_-]?key|(access|account|api)[_-]?key|connection[_-]?string"
    r"|(^|[_-])(auth|token|key|sig|signature)$", re.I)  # e.g. sas_token, headers.Authorization, X-Amz-Signature
# userinfo may hold an unencoded '/' (AWS secret keys do): over-redacting a path with '@' is the safe side
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^@\s]+@", re.I)
# name=value pairs of query strings and fragments (and of connection strings, "AccountKey=...;")
_URL_PARAM = re.compile(r"(?P<name>(?<=[?&;#])[^=&;#\s]+)=[^&;#\s]*")
REDACTED = "<redacted>"
# Storage options are where credentials usually live, under names no pattern can foresee (client_kwargs, profile,
# sas URLs...): public copies keep the values of these harmless ones only.
PUBLIC_STORAGE_OPTIONS = ("endpoint_url", "region_name", "anon", "use_ssl", "requester_pays", "config_kwargs",
                          "default_block_size", "version_aware", "client_kwargs.endpoint_url",
                          "client_kwargs.region_name")


def redact(value: Any, key: str = "") -> Any:
    """Copy of a JSON-like value with secret-looking entries replaced, for manifests and artifacts.

    Everything under a secret-looking key goes, whatever its type (a numeric password, a service-account dict);
    in strings, URL userinfo and the values of secret-looking query parameters go.
    ``api_key_secret`` names a Prefect Secret block (not the secret itself) and is kept.
    """
    if key != "api_key_secret" and _SECRET_KEY.search(key) and value is not None and not isinstance(value, bool):
        return REDACTED
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, key) for v in value]
    if isinstance(value, str):
        value = _URL_USERINFO.sub(r"\g<scheme>" + REDACTED + "@", value)
        return _URL_PARAM.sub(lambda m: f"{m['name']}={REDACTED}" if _SECRET_KEY.search(m["name"]) else m[0], value)
    return value


def _keep_public_options(options: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in options.items():
        path = f"{prefix}{key}"
        if path in PUBLIC_STORAGE_OPTIONS:
            out[key] = value
        elif isinstance(value, dict) and any(p.startswith(path + ".") for p in PUBLIC_STORAGE_OPTIONS):
            out[key] = _keep_public_options(value, path + ".")
        else:
            out[key] = REDACTED
    return out


def public_config(config: BaseModel) -> dict:
    """The config as JSON with secrets removed: what manifests, artifacts and logs may show."""
    public = redact(config.model_dump(mode="json"))
    storage = public.get("storage")
    if isinstance(storage, dict) and isinstance(storage.get("storage_options"), dict):
        storage["storage_options"] = _keep_public_options(storage["storage_options"])
    return public
