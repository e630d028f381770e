"""Helpers shared by the test tiers: one cluster, node, host and CLI helper each, one polling loop.

- ``wait``: ``wait_until``, the one polling loop.
- ``cli``: the real ``paxmr`` executable as a subprocess (``paxmr``, ``clean_env``, ``ok``).
- ``local``: a real local cluster on loopback (``Node``, ``Cluster``), started in-process or
  through ``paxmr local up``, and process faults (``sigkill``, ``alive``).
- ``peerlink``: real peer transports on loopback, and a cut of their link (``cut_and_heal``).
- ``peerwire``: a hand-made peer client (raw TLS, frames built here) for hostile-peer tests.
- ``metrics``: the PRM's Prometheus text read into numbers.
- ``hosts``: the deployed cluster on the systemd test hosts (``Cluster``, ``playbook``).

Tier-specific pieces stay with their tier: the simulated-network harness and the cores broken on
purpose in tests/paxos, fixtures in each tier's conftest.py.

Import them absolutely (``from tests.support.local import Cluster``); pytest puts the
repository root on ``sys.path`` (``pythonpath`` in pyproject.toml).
"""
