"""edgeprune from Python: :func:`prune`, :func:`profile` and :func:`gate`, with the command line's
guarantees (the same typed settings and checks, the same one-line :class:`~edgeprune.errors.UserError`,
the same files) and no ``sys.exit`` on the way. The command line is a thin layer over these."""

from edgeprune.api.gate import gate
from edgeprune.api.profile import profile
from edgeprune.api.prune import PruneReport, PruneResult, prune

__all__ = ["PruneReport", "PruneResult", "gate", "profile", "prune"]
