# expect: crashed
# Interpreter crash without ctypes: faulthandler's self-test reads address 0.
def solution():
    import faulthandler
    faulthandler._read_null()
    return 1
