"""Many files as one persisted job: a row per file, small files over a lean path."""
