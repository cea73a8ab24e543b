# expect: blocked
# hook-only: yes
def solution():
    import shutil
    shutil.rmtree("__CANARY_DIR__")
    return 1
