"""A farm of device agents: every measurement goes to whichever agent of the run's fingerprint is
free, one measurement per device at a time.

``--agents URL1,URL2,...`` or ``--agents farm.yaml`` (:func:`agent_urls`). The agents are asked
for their fingerprint first; agents with equal fingerprints share one queue (:class:`Pool`). A run
measures on one pool only, so one candidate's latency never mixes devices of different
fingerprints, and every number in the run's cache rows is keyed by the devices that produced it.
Which pool is the user's choice, not the agents' (they report their own facts): the one of the
profile's own ``agent`` when it is listed, else the one of the first agent listed that answers.
Paired measurements (candidate next to the reference) make agents of one pool interchangeable:
each agent times the reference with every candidate, and a slower board of the same kind moves
both alike.

An agent that stops answering (refused, reset, timed out, 5xx) is taken out of rotation and the
measurement it held goes back to the front of the queue, for an agent that has not tried it yet:
no model is timed twice on one device, and a measurement is lost only when every agent has failed
it. Scheduling is Python threads, one per agent, each holding one HTTP request at a time: the
work is waiting on devices, not computing, and a farm of hundreds of agents is still a few
hundred idle threads (a coordinator for more would be Ray's, see docs/usage.md).

Tokens are never named here: each agent's comes from what the user pinned to its URL
(:mod:`edgeprune.profiling.credentials`), as for a single agent.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from edgeprune.errors import UserError
from edgeprune.profiling.backend import AsyncBackend
from edgeprune.profiling.credentials import CREDENTIAL_KEYS
from edgeprune.profiling.fingerprint import fingerprint_hash
from edgeprune.profiling.remote import AgentUnavailable, RemoteBackend
from edgeprune.profiling.stats import LatencyStats, NodeTimes
from edgeprune.profiling.targets import Profile, check_agent_url

MAX_AGENTS = 256
_MAX_FARM_FILE_BYTES = 1 << 20


def agent_urls(text: str, target: str) -> list[str]:
    """The agents of ``--agents``: comma-separated URLs, or a YAML file listing them.

    The file holds ``agents:``, a list of URLs or of mappings ``{url: URL, target: NAME}``; an
    agent whose ``target`` names another profile serves another queue and is left out of a run on
    ``target``. Tokens are refused here (the file may be shared): pin them to the URLs in your
    agents.yaml or with $EDGEPRUNE_AGENT_URL + $EDGEPRUNE_AGENT_TOKEN.
    """
    if is_farm_file(text):
        urls = _farm_file(Path(text), target)
    else:
        urls = [u.strip() for u in text.split(",") if u.strip()]
    source = f"--agents {text}"
    if not urls:
        raise UserError(f"{source} names no agent for target '{target}'; give URLs like http://127.0.0.1:8765,http://127.0.0.1:8766")
    if len(urls) > MAX_AGENTS:
        raise UserError(f"{source} names {len(urls)} agents, above the limit of {MAX_AGENTS}; split the farm")
    for url in urls:
        check_agent_url(url, source)
    normal = [url.rstrip("/") for url in urls]
    repeated = sorted(u for u, n in Counter(normal).items() if n > 1)
    if repeated:
        raise UserError(f"{source} names {repeated[0]} more than once; list each agent once (one agent measures one model at a time)")
    return normal


def is_farm_file(text: str) -> bool:
    """Whether ``--agents`` names a farm file rather than URLs."""
    return text.endswith((".yaml", ".yml"))


def _farm_file(path: Path, target: str) -> list[str]:
    where = f"farm file {path}"
    try:
        if path.stat().st_size > _MAX_FARM_FILE_BYTES:
            raise UserError(f"{where} is larger than {_MAX_FARM_FILE_BYTES} bytes; it should list agents only")
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{where} does not exist; pass a YAML file with 'agents:' or comma-separated URLs") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, yaml.YAMLError) as exc:
        raise UserError(f"{where} cannot be read as YAML ({type(exc).__name__}); fix the file") from None
    if not isinstance(data, dict) or set(data) != {"agents"} or not isinstance(data["agents"], list):
        raise UserError(f"{where} must hold exactly one key, 'agents', with a list of URLs or {{url, target}} mappings")
    urls = []
    for i, entry in enumerate(data["agents"]):
        if isinstance(entry, str):
            urls.append(entry)
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            raise UserError(f"{where}: agents[{i}] must be a URL or a mapping with 'url' (and optionally 'target')")
        if any(k in entry for k in CREDENTIAL_KEYS):
            raise UserError(
                f"{where}: agents[{i}] names a token, which a farm file (often shared) may not: it would choose where "
                "your token goes; pin the token to the agent's URL in your agents.yaml or with $EDGEPRUNE_AGENT_URL + $EDGEPRUNE_AGENT_TOKEN"
            )
        unknown = set(entry) - {"url", "target"}
        if unknown:
            raise UserError(f"{where}: agents[{i}] has the unknown key '{sorted(unknown)[0]}'; valid keys: url, target")
        if entry.get("target", target) == target:
            urls.append(entry["url"])
    return urls


@dataclass
class _Job:
    label: str
    call: Callable[[RemoteBackend], Any]
    future: Future = field(default_factory=Future)
    tried: list[str] = field(default_factory=list)


class Pool:
    """The agents of one fingerprint and their queue: a thread per agent takes the oldest job
    that agent has not tried yet, so each device measures one model at a time."""

    def __init__(self, fingerprint: dict[str, Any], agents: list[RemoteBackend], warn: Callable[[str], None] = lambda _m: None):
        self.fingerprint = fingerprint
        self.agents = agents
        self.warn = warn
        self.removed: list[dict[str, str]] = []  # {"agent", "reason"}: taken out of rotation
        self.log: list[dict[str, Any]] = []  # every attempt: {"label", "agent", "ok", "seconds"}
        self._cond = threading.Condition()
        self._queue: deque[_Job] = deque()
        self._live = [a.url for a in agents]
        self._closed = False
        self._threads = [threading.Thread(target=self._work, args=(a,), daemon=True, name=f"edgeprune agent {a.url}") for a in agents]
        for thread in self._threads:
            thread.start()

    @property
    def live(self) -> list[str]:
        """The agents still in rotation."""
        with self._cond:
            return list(self._live)

    def submit(self, label: str, call: Callable[[RemoteBackend], Any]) -> Future:
        """Queue ``call(agent)`` for the next free agent; ``label`` names it in the log."""
        job = _Job(label, call)
        with self._cond:
            if self._closed or not self._live:
                job.future.set_exception(self._none_left(label))
            else:
                self._queue.append(job)
                self._cond.notify_all()
        return job.future

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for job in self._queue:
                job.future.set_exception(UserError(f"the farm was closed before {job.label} was measured"))
            self._queue.clear()
            self._cond.notify_all()

    def _work(self, agent: RemoteBackend) -> None:
        while (job := self._take(agent.url)) is not None:
            start = time.monotonic()
            try:
                result = job.call(agent)
            except AgentUnavailable as exc:
                self._retire(agent.url, job, exc, time.monotonic() - start)
                return
            except BaseException as exc:  # the model's fault, not the device's: every agent would fail it
                self._record(job.label, agent.url, False, time.monotonic() - start)
                job.future.set_exception(exc)
                continue
            self._record(job.label, agent.url, True, time.monotonic() - start)
            job.future.set_result(result)

    def _take(self, url: str) -> _Job | None:
        with self._cond:
            while True:
                if self._closed or url not in self._live:
                    return None
                for job in self._queue:
                    if url not in job.tried:
                        self._queue.remove(job)
                        return job
                self._cond.wait()

    def _record(self, label: str, url: str, ok: bool, seconds: float) -> None:
        with self._cond:
            self.log.append({"label": label, "agent": url, "ok": ok, "seconds": round(seconds, 3)})

    def _retire(self, url: str, job: _Job, exc: Exception, seconds: float) -> None:
        """Out of rotation; its job goes back to the front of the queue for an agent that has not
        tried it, and queued jobs every remaining agent has tried fail."""
        with self._cond:
            self.log.append({"label": job.label, "agent": url, "ok": False, "seconds": round(seconds, 3)})
            self._live.remove(url)
            self.removed.append({"agent": url, "reason": str(exc)})
            job.tried.append(url)
            if self._closed:
                job.future.set_exception(UserError(f"the farm was closed before {job.label} was measured"))
            else:
                self._queue.appendleft(job)
            for waiting in list(self._queue):
                if all(u in waiting.tried for u in self._live):
                    self._queue.remove(waiting)
                    waiting.future.set_exception(self._none_left(waiting.label, exc))
            self._cond.notify_all()
            left = len(self._live)
        self.warn(f"agent {url} stopped answering and is out of rotation ({exc}); {left} agent(s) left")

    def _none_left(self, label: str, cause: Exception | None = None) -> UserError:
        why = f" (last: {cause})" if cause is not None else ""
        return UserError(f"no agent of the farm is left to measure {label}{why}; restart the agents and resume the run with --resume")

    def summary(self) -> dict[str, Any]:
        """Who measured what: for the report."""
        with self._cond:
            done = Counter(entry["agent"] for entry in self.log if entry["ok"])
            return {
                "fingerprint": fingerprint_hash(self.fingerprint),
                "agents": [{"url": a.url, "measurements": done.get(a.url, 0), "in_rotation": a.url in self._live} for a in self.agents],
                "removed": list(self.removed),
                "attempts": len(self.log),
            }


class FarmBackend(AsyncBackend):
    """An :class:`AsyncBackend` over the agents of ``urls`` whose fingerprint is the one the user
    expects: that of the profile's own ``agent`` when it is one of ``urls``, else that of the
    first agent listed (each the first that answers, in that order). Never a majority: agents
    report their own facts, and look-alikes in numbers must not take a run, nor its cache rows.
    Agents of other fingerprints, and those that do not answer at the start, are left out with a
    warning and named in :meth:`summary`."""

    supports_node_times = False

    def __init__(self, profile: Profile, urls: list[str], warn: Callable[[str], None] = lambda _m: None):
        self.profile = profile
        members = [RemoteBackend(dataclasses.replace(profile, agent=url)) for url in urls]
        with ThreadPoolExecutor(max_workers=min(32, len(members))) as ex:
            answers = list(ex.map(_fingerprint_or_error, members))
        groups: dict[str, list[RemoteBackend]] = {}
        self.left_out: list[dict[str, str]] = []
        for member, (fp, error) in zip(members, answers):
            if error is not None:
                self.left_out.append({"agent": member.url, "reason": f"did not answer at the start: {error}"})
                continue
            groups.setdefault(fingerprint_hash(fp), []).append(member)
        if not groups:
            raise UserError(f"none of the {len(urls)} agent(s) answered; start `edgeprune agent` on the devices (first: {self.left_out[0]['reason']})")
        answered = [m for group in groups.values() for m in group]
        expected = (profile.agent or "").rstrip("/")
        # The profile's own agent first, then listing order: the first of them that answered sets
        # the fingerprint.
        first = min(answered, key=lambda m: (m.url != expected, members.index(m)))
        self.decided_by = first.url
        chosen = next(h for h, group in groups.items() if first in group)
        for h, group in groups.items():
            if h != chosen:
                self.left_out += [{"agent": m.url, "reason": f"fingerprint {h} differs from {first.url}'s {chosen}, which this run uses"} for m in group]
        for entry in self.left_out:
            warn(f"agent {entry['agent']} left out: {entry['reason']}")
        self.pool = Pool(groups[chosen][0].fingerprint(), groups[chosen], warn)

    def fingerprint(self) -> dict[str, Any]:
        return dict(self.pool.fingerprint)

    def capacity(self) -> int:
        """The agents in rotation: one measurement each at a time."""
        return max(1, len(self.pool.live))

    def submit(self, onnx_bytes: bytes, input_shape: tuple[int, ...], paired: bool, label: str) -> Future:
        """A measurement on the next free agent: ``LatencyStats`` or, ``paired``, the
        ``(candidate, reference)`` pair."""
        shape = tuple(input_shape)
        if paired:
            return self.pool.submit(label, lambda agent: agent.measure_pair(onnx_bytes, shape))
        return self.pool.submit(label, lambda agent: agent.measure(onnx_bytes, shape))

    def measure(self, onnx_bytes: bytes, input_shape: tuple[int, ...]) -> LatencyStats:
        return self.submit(onnx_bytes, input_shape, False, "a model").result()

    def set_reference(self, onnx_bytes: bytes, input_shape: tuple[int, ...]) -> None:
        """Every agent keeps it and uploads it with its first paired measurement."""
        for agent in self.pool.agents:
            agent.set_reference(onnx_bytes, input_shape)

    def measure_pair(self, onnx_bytes: bytes, input_shape: tuple[int, ...]) -> tuple[LatencyStats, LatencyStats]:
        return self.submit(onnx_bytes, input_shape, True, "a model").result()

    def node_times(self, onnx_bytes: bytes, input_shape: tuple[int, ...], runs: int = 50) -> NodeTimes:
        raise NotImplementedError("agents serve no per-node times")

    def close(self) -> None:
        self.pool.close()

    def summary(self) -> dict[str, Any]:
        return self.pool.summary() | {"left_out": list(self.left_out), "fingerprint_of": self.decided_by}


def _fingerprint_or_error(member: RemoteBackend) -> tuple[dict[str, Any] | None, str | None]:
    try:
        return member.fingerprint(), None
    except (UserError, ValueError, RuntimeError) as exc:  # unreachable, refused, not an agent
        return None, str(exc)
