# expect: exception
def solution():
    import os
    os.killpg(0, 9)
    return 1
