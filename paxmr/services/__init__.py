"""The asyncio daemons: mapper, reducer and PRM, each behind its control socket."""
