# expect: answer=1 | exception
def solution():
    import ctypes
    import os
    ctypes.CDLL(None).kill(os.getppid(), 9)
    return 1
