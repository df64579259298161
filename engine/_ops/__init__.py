"""The engine side of an operation: its status machine, admission, run, events and reads."""
