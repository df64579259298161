"""The engine thread and what it shares: its loop, per-process singletons, timers, and what
the engine knows of the world (network, cost, free disk)."""
