# expect: blocked
# hook-only: yes
def solution():
    import os
    os.system("touch __CANARY_DIR__/from_system")
    return 1
