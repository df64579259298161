"""The background service: a process of its own that drives downloads for its clients.

Theory of operation
-------------------
One service runs per user and state directory (``paths``).  It listens on a Unix
socket only (mode 0600 in a 0700 directory), checks every connection's uid with
SO_PEERCRED (``peercred``), and speaks HTTP and JSON (``protocol``, ``server``),
with one WebSocket a client for events (``hub``).  Its operations are the
in-process engine's: the state database is the same, so every status is committed
before it is reported and a killed service resumes where the control files say.
What the engine's database forgets (an operation that ended, one to resume after
``service stop``, one that needs credentials) the service keeps in its own journal
(``journal``).  Clients (``client``) start it on demand under a lock (``launcher``);
``api`` gives the downloader and operation classes whose work lives there.
"""
