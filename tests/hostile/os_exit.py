# expect: crashed
def solution():
    import os
    os._exit(0)
