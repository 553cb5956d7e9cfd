"""Running test code on several threads at once, each with its own database connection."""

import threading


def run_concurrently(targets, *, timeout=30):
    """Start every callable in ``targets`` on its own thread, wait for all, and fail if one hung.

    Each target should close its database connection when done (``connections.close_all()``).
    """
    threads = [threading.Thread(target=target) for target in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    assert not any(thread.is_alive() for thread in threads), "a concurrent thread hung"
