# expect: exception
def solution():
    import os
    os.rename("__CANARY_DIR__/canary.txt", "__CANARY_DIR__/renamed.txt")
    return 1
