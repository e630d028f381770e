"""Shared by every tier: hypothesis settings that do not flake on a busy CI machine."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# No per-example deadline: a loaded 2-core runner must not turn a slow example into a failure.
settings.register_profile("paxmr", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", parent=settings.get_profile("paxmr"), max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "paxmr"))
