"""One file over many ranged connections: the schedule of its requests, each request,
the checks every response passes before its bytes are kept, and the sink they go to."""
