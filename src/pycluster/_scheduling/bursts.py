"""What a *burst* of new connections is, for every policy that shares one out.

Clients that open their connections at once after a quiet spell (a pool of
keep-alive connections starting, a load balancer reconnecting) place them for as
long as they live, so round robin holds turns for them and the shared policy's
workers take turns accepting them. Under a steady stream of connections neither
does: there the other workers run anyway, and waiting costs throughput.
"""

from __future__ import annotations

#: Seconds without a new connection after which the next ones are a burst ...
QUIET_SPELL = 0.05
#: ... for this long after its first connection: long enough to cover a burst whose
#: workers wait for a CPU on a loaded machine.
BURST_SPAN = 0.25
