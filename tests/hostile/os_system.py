# expect: answer=1 | exception
def solution():
    import os
    os.system("touch __CANARY_DIR__/from_system")
    return 1
