# expect: crashed
# Lifts the recursion limit, then recurses in C (comparing two deeply nested lists): the C stack
# overflows and the worker dies with SIGSEGV.
def solution():
    import sys
    sys.setrecursionlimit(10 ** 8)
    left, right = [], []
    for _ in range(10 ** 5):
        left, right = [left], [right]
    return left == right
