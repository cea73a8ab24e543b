# expect: exception
def solution():
    import os
    os.kill(-1, 9)
    return 1
