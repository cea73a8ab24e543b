# expect: timeout
# An endless loop: the caller's wall-clock deadline kills the worker with SIGKILL.
def solution():
    while True:
        pass
