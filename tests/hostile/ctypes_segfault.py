# expect: blocked
def solution():
    import ctypes
    return ctypes.string_at(0)
