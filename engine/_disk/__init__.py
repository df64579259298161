"""The C core's Python side: range files, the filer's threads, whole-file checksums."""
