"""Which bearer token goes to which device agent: only what the user pinned to that agent's URL.

A target profile names the agent it measures on, and profiles travel (a budgets file in a repo
names one, a report.json carries one), so a profile must never decide where a credential is
sent. A token is therefore looked up by the agent's origin (scheme, host, port) in what only the
user controls:

1. ``$EDGEPRUNE_AGENT_TOKEN`` together with ``$EDGEPRUNE_AGENT_URL``: the token goes to that
   origin and nowhere else (set in a CI job's secrets, say);
2. ``agents.yaml`` in the user's config folder (``$EDGEPRUNE_CONFIG_DIR`` or platformdirs'
   ``user_config_dir("edgeprune")``)::

       agents:
         - url: http://192.168.1.20:8765
           token_file: ~/.config/edgeprune/orin.token

An agent with no pinned token is called without one (a loopback agent, or an SSH tunnel to one).
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

import yaml

from edgeprune.errors import UserError

TOKEN_ENV = "EDGEPRUNE_AGENT_TOKEN"
URL_ENV = "EDGEPRUNE_AGENT_URL"
CONFIG_ENV = "EDGEPRUNE_CONFIG_DIR"
_MAX_AGENTS = 256
# The keys that name a token or where to read one. Only the user's agents.yaml may hold them: a
# profile or a farm file is often someone else's, and would choose where the token goes.
CREDENTIAL_KEYS = ("token", "token_file", "agent_token", "agent_token_file")


def config_path() -> Path:
    """``agents.yaml`` in ``$EDGEPRUNE_CONFIG_DIR`` or the user's config folder."""
    import platformdirs

    folder = os.environ.get(CONFIG_ENV) or platformdirs.user_config_dir("edgeprune")
    return Path(folder) / "agents.yaml"


def origin(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an http(s) URL, the unit a token is pinned to; None if it is not one."""
    try:  # a broken IPv6 host ("http://[::1", "http://[zz]:8765") raises here too
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.scheme, parts.hostname.lower(), port or (443 if parts.scheme == "https" else 80)


def token_for(agent_url: str) -> str | None:
    """The token the user pinned to ``agent_url``'s origin, else None."""
    target = origin(agent_url)
    if target is None:
        return None
    env_token, env_url = os.environ.get(TOKEN_ENV, "").strip(), os.environ.get(URL_ENV, "")
    if env_token and env_url:
        if origin(env_url) is None:
            raise UserError(f"${URL_ENV} is {env_url[:80]!r}; set it to the agent's URL such as http://HOST:8765")
        if origin(env_url) == target:
            return env_token
    for url, token_file in _configured_agents():
        if origin(url) == target:
            return _read_token(token_file)
    return None


def _configured_agents() -> list[tuple[str, str]]:
    """``(url, token_file)`` entries of the user's agents.yaml (none when the file is absent)."""
    path = config_path()
    if not path.is_file():
        return []
    fix = f"fix {path} (agents: [{{url: http://HOST:PORT, token_file: PATH}}])"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, ValueError, RecursionError):
        raise UserError(f"{path} is not valid YAML; {fix}") from None
    agents = data.get("agents") if isinstance(data, dict) else None
    if not isinstance(agents, list) or len(agents) > _MAX_AGENTS:
        raise UserError(f"{path} must hold 'agents:', a list of at most {_MAX_AGENTS} entries; {fix}")
    entries = []
    for i, entry in enumerate(agents, 1):
        ok = isinstance(entry, dict) and set(entry) == {"url", "token_file"}
        if not ok or not isinstance(entry["url"], str) or not isinstance(entry["token_file"], str) or origin(entry["url"]) is None:
            raise UserError(f"{path}: agent entry {i} must have exactly 'url' (http://HOST:PORT) and 'token_file'; {fix}")
        entries.append((entry["url"], entry["token_file"]))
    return entries


def _read_token(token_file: str) -> str:
    path = Path(token_file).expanduser()
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read the agent token file {path} named in {config_path()} ({getattr(exc, 'strerror', None) or exc}); fix the path") from None
    if not token or len(token) > 4096 or any(c.isspace() for c in token):
        raise UserError(f"agent token file {path} must hold one token without spaces; write the agent's token into it")
    return token
