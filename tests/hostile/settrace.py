# expect: blocked
def solution():
    import sys
    sys.settrace(lambda *args: None)
    return 1
