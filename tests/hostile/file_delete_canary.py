# expect: exception
def solution():
    import os
    os.remove("__CANARY_DIR__/canary.txt")
    return 1
