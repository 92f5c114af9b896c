"""Pure state machines: no I/O, no clock, no asyncio."""
