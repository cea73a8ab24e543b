# expect: exception
def solution():
    import os
    os.chmod("__CANARY_DIR__/canary.txt", 0o777)
    return 1
