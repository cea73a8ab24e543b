# expect: blocked
# hook-only: yes
def solution():
    import os
    os.killpg(0, 9)
    return 1
