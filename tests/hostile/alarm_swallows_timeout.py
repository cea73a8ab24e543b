# expect: timeout
# Installs handlers that swallow SIGALRM/SIGTERM (what upstream's in-process timeout relies on)
# and loops: the deadline is enforced from outside with SIGKILL.
def solution():
    import signal
    signal.signal(signal.SIGALRM, lambda *args: None)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.alarm(1)
    while True:
        pass
