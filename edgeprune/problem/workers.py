"""Candidate accuracy on Ray: ``--workers ray[:ADDRESS]``.

Scoring a candidate (shrink, adaptive-BN recalibration, the task's score, model scores such as
robustness) and the selection stage's short tunes are independent per candidate, so a generation
spreads over every CPU of a Ray cluster. Ray, not a scheduler of ours, decides where each task
runs, ships the objects and retries a task whose worker died (``MAX_RETRIES``); the problem
journals a candidate only when its answer is back, so a retried task is neither lost nor counted
twice.

The channel space (with the model), the task (with its data) and the model scores go to Ray's
object store once per problem, not per task; a worker process loads them once and keeps them
(:func:`_loaded`). Each task sets torch's thread count to the driver's (and reserves as many
CPUs), so a worker computes the same floating-point sums as this process would: same seed, same
widths, same accuracies as a local run. A node therefore runs ``its CPUs / the driver's threads``
tasks at once: Ray pays off across machines, not on the driver's own cores. Latency is never measured on a worker: timing belongs to the target (a farm of agents,
or this host's CPU while nothing else of ours runs).

Everything shipped to workers is unpickled there, by Ray: the driver's own objects going to the
user's own cluster, never a file or a network peer's input.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

from edgeprune.errors import UserError
from edgeprune.problem.pruning import ModelScore, recalibrate_bn, scores_of
from edgeprune.space.channels import ChannelPlan, ChannelSpace
from edgeprune.tasks.task import Task

MAX_RETRIES = 3  # a worker process that dies mid-task: the task runs again elsewhere
_KEEP_LOADED = 4  # shared bundles a worker process holds (the search's, the short tunes')
RAY_HINT = "pip install 'edgeprune[ray]'"
LOCAL_HOST = "127.0.0.1"  # where the cluster --workers ray starts listens


def require_ray():
    try:
        import ray  # noqa: PLC0415 - optional extra, imported only with --workers ray
    except ImportError:
        raise UserError(f"--workers ray needs Ray; install it with {RAY_HINT}") from None
    return ray


class RayWorkers:
    """Scores candidates and runs short tunes as Ray tasks (see the module docstring)."""

    def __init__(self, address: str):
        ray = self._ray = require_ray()
        self.address = address or "local"
        self._owned = not ray.is_initialized()
        if self._owned:
            _init(ray, address)
        # Each task computes with the driver's thread count and reserves that many CPUs, so Ray
        # never packs more threads onto a node than it has cores (oversubscribed, torch crawls).
        self._threads = torch.get_num_threads()
        # Never more than the largest node has: such a task would wait for a node that never comes.
        largest = max((n.get("Resources", {}).get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
        options = dict(max_retries=MAX_RETRIES, num_cpus=max(1, min(self._threads, int(largest) or 1)))
        self._score = ray.remote(**options)(_score)
        self._tune = ray.remote(**options)(_tune)
        self._bundles: dict[tuple[int, ...], tuple[Any, tuple]] = {}

    def score(self, space: ChannelSpace, task: Task, model_scores: Sequence[ModelScore], plans: list[ChannelPlan]) -> list[tuple[float, dict[str, float], float]]:
        """``(accuracy, model scores, seconds)`` per plan, after adaptive BN (PruningProblem's)."""
        bundle = self._bundle(space, task, tuple(model_scores))
        return self._get([self._score.remote(bundle, plan, self._threads) for plan in plans])

    def short_tune(
        self, space: ChannelSpace, task: Task, model_scores: Sequence[ModelScore], teacher: torch.nn.Module,
        plans: list[ChannelPlan], epochs: float, seed: int,
    ) -> list[dict[str, float]]:
        """Each plan's network after ``epochs`` of the task's fine-tune: its accuracy and model
        scores (the selection stage's short tune)."""
        bundle = self._bundle(space, task, tuple(model_scores), teacher)
        count = len(plans)
        return self._get([
            self._tune.remote(bundle, plan, epochs, seed, f"short tune {i}/{count}", self._threads) for i, plan in enumerate(plans, 1)
        ])

    def describe(self) -> dict[str, Any]:
        """The report's ``workers`` entry: where candidates were scored."""
        resources = self._ray.cluster_resources()
        return {"kind": "ray", "address": self.address, "nodes": len(self._ray.nodes()), "cpus": int(resources.get("CPU", 0)), "ray": self._ray.__version__}

    def close(self) -> None:
        self._bundles.clear()
        if self._owned and self._ray.is_initialized():
            self._ray.shutdown()

    def _bundle(self, *objects) -> list:
        """The objects' reference in the object store, put there once; in a list, so that Ray
        hands the task the reference and the worker loads it once (:func:`_loaded`)."""
        key = tuple(id(o) for o in objects)
        if key not in self._bundles:
            # The objects are kept with their reference: a reused id() would otherwise alias.
            self._bundles[key] = (self._ray.put(objects), objects)
            while len(self._bundles) > _KEEP_LOADED:  # an earlier round's: its objects are freed
                self._bundles.pop(next(iter(self._bundles)))
        return [self._bundles[key][0]]

    def _get(self, refs: list) -> list:
        try:
            return self._ray.get(refs)
        except self._ray.exceptions.RayTaskError as exc:  # the task's own exception: the user's to see
            cause = getattr(exc, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise
        except self._ray.exceptions.RayError as exc:  # workers or nodes lost beyond the retries
            raise UserError(
                f"the Ray cluster at {self.address} lost a candidate's task after {MAX_RETRIES} retries ({type(exc).__name__}); "
                "check the cluster, then continue the run with --resume OUT_DIR"
            ) from None


def _init(ray, address: str) -> None:
    """Start a Ray cluster on this machine (``address`` ""), listening on 127.0.0.1 only, or join
    the one at ``address``. Only the address the user typed is used: ``$RAY_ADDRESS`` would make
    ``--workers ray`` (and a resumed run of it) join whatever cluster the environment names and
    ship it the model. Any failure to start is one line (Ray's own errors are many types).

    Relies on Ray 2.60's handling (the range pinned in pyproject.toml, checked by the tests):
    ``address="local"`` always starts a new cluster, and a node whose IP is 127.0.0.1 binds its
    servers to loopback; ``ray.init`` turns 127.0.0.1 into the host's address unless Ray's cluster
    mode is off, so it is off while the node starts."""
    from ray._private import ray_constants

    where = address or "a local cluster"
    env = os.environ.pop("RAY_ADDRESS", None)
    cluster_mode = ray_constants.ENABLE_RAY_CLUSTER
    log = logging.getLogger("ray")
    level = log.level
    log.setLevel(logging.ERROR)  # its start-up notices (token mode, ...) are not this run's output
    try:
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        else:
            ray_constants.ENABLE_RAY_CLUSTER = False
            ray.init(address="local", _node_ip_address=LOCAL_HOST, include_dashboard=False, log_to_driver=False, configure_logging=False)
            node = ray.util.get_node_ip_address()
            if node != LOCAL_HOST:
                raise RuntimeError(f"Ray's node came up on {node}, not {LOCAL_HOST}")
    except Exception as exc:  # noqa: BLE001 - Ray raises ConnectionError, OSError, RuntimeError, ValueError, TimeoutError, ...
        if ray.is_initialized():
            ray.shutdown()
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"cannot start or join the Ray cluster at {where} ({reason}); fix --workers ray:ADDRESS, or run with --workers local") from None
    finally:
        log.setLevel(level)
        ray_constants.ENABLE_RAY_CLUSTER = cluster_mode
        if env is not None:
            os.environ["RAY_ADDRESS"] = env


_LOADED: OrderedDict[str, tuple] = OrderedDict()


def _loaded(box: list) -> tuple:
    """The bundle behind ``box[0]``, fetched once per worker process."""
    import ray  # noqa: PLC0415 - runs on a Ray worker, where Ray is installed

    key = box[0].hex()
    if key not in _LOADED:
        _LOADED[key] = ray.get(box[0])
        while len(_LOADED) > _KEEP_LOADED:
            _LOADED.popitem(last=False)
    _LOADED.move_to_end(key)
    return _LOADED[key]


def _score(box: list, plan: ChannelPlan, threads: int) -> tuple[float, dict[str, float], float]:
    start = time.perf_counter()
    torch.set_num_threads(threads)
    space, task, model_scores = _loaded(box)
    scores = scores_of(recalibrate_bn(space.shrink(plan), task.calibration_batches()), task, model_scores)
    return scores.pop("accuracy"), scores, time.perf_counter() - start


def _tune(box: list, plan: ChannelPlan, epochs: float, seed: int, description: str, threads: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    space, task, model_scores, teacher = _loaded(box)
    model = space.shrink(plan)
    task.fine_tune(model, teacher, epochs, seed, description)
    return scores_of(model, task, model_scores)
