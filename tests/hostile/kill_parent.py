# expect: exception
# The worker's parent is the zygote.
def solution():
    import os
    os.kill(os.getppid(), 9)
    return 1
