# expect: exception
def solution():
    import os
    os.killpg(os.getpgid(os.getppid()), 9)
    return 1
