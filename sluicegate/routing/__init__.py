"""Routing a public model name to its upstream targets (a provider and an upstream model each): the
pure parts the route stage wires together, such as the order in which targets are tried, a circuit
breaker per target, a retry budget, jittered backoff and a per-call deadline. Nothing here does I/O;
time is read through an injected clock and randomness through an injected `random.Random`, and the
classes are used from the event loop thread only, so they hold no locks."""
