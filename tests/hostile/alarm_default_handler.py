# expect: crashed
# SIGALRM with its default action terminates the worker: only this program pays.
def solution():
    import signal
    import time
    signal.alarm(1)
    time.sleep(5)
    return 1
