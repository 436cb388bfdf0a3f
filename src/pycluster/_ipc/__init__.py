"""IPC channel: framing, descriptor passing, codecs and both channel ends."""
