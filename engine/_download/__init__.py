"""One file over many ranged connections: which bytes each request asks for, and the checks
every response must pass before its bytes are kept."""
