# expect: blocked
# hook-only: yes
def solution():
    import os
    os.chmod("__CANARY_DIR__/canary.txt", 0o777)
    return 1
