"""Request intake shared by the router and the workers (no torch, no HTTP framework state).

``spool`` (bytes in memory, then on disk), ``body`` (receiving a body within deadlines),
``jsonstream`` and ``multipart`` (bounded-memory parsers run in a thread), ``submission`` (the
four request forms as one MediaRequest), ``request`` (the async entry point).
"""
