"""The tests' FTP server, run as a child process: ftp_server.py ROOT RATE REST_LOG.

Prints its port, then serves until terminated.  Anonymous users read ROOT; so does
user ``u`` with password ``p``.  RATE (bytes/s, 0 for none) limits each data
connection; every REST offset asked for is appended to REST_LOG.
"""

from __future__ import annotations

import logging
import sys

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler, ThrottledDTPHandler
from pyftpdlib.servers import ThreadedFTPServer


def main(root: str, rate: int, rest_log: str) -> None:
    authorizer = DummyAuthorizer()
    authorizer.add_anonymous(root)
    authorizer.add_user("u", "p", root, perm="elr")

    class Dtp(ThrottledDTPHandler):  # type: ignore[misc]
        write_limit = rate  # what the server sends (read_limit is for uploads)

    class Handler(FTPHandler):  # type: ignore[misc]
        dtp_handler = Dtp if rate else FTPHandler.dtp_handler
        use_sendfile = not rate  # sendfile() would slip past the throttle
        auth_failed_timeout = 0.1

        def ftp_REST(self, line: str) -> object:
            with open(rest_log, "a") as log:
                log.write(f"{int(line)}\n")
            return super().ftp_REST(line)

    Handler.authorizer = authorizer
    logging.basicConfig(level=logging.WARNING)
    server = ThreadedFTPServer(("127.0.0.1", 0), Handler)
    print(server.address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
