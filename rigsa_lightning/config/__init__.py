"""Configuration: the option table every key is checked against (``options``), the preflight that runs it and asks
each component to check its own group (``validation``), the config accessors and resolvers (``access``) and the
one-line error every bad input becomes (``errors``). ``access`` and ``errors`` are leaves that every layer imports."""
