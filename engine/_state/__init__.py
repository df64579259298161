"""What outlives a process: the SQLite state database and the lock on who drives an operation."""
