"""Connection-distribution decisions, free of I/O so they are tested without sockets."""
