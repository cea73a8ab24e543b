# expect: exception
def solution():
    import shutil
    shutil.rmtree("__CANARY_DIR__")
    return 1
