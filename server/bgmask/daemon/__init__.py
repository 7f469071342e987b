"""The daemon: sockets and handshake, one process per user, frame sequences."""
