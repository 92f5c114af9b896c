"""Message types, framing and serialization: the bottom of the stack above ``errors``."""
