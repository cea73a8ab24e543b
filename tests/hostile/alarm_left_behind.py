# expect: answer=7
# Returns at once but leaves an alarm armed to kill whatever runs next in this worker.  The
# program is not plain (it names `signal`), so its worker is retired right after it.
def solution():
    import signal
    signal.alarm(1)
    return 7
