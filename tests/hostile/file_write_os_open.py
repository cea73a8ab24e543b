# expect: exception
# Low-level open with write flags.
def solution():
    import os
    fd = os.open("__CANARY_DIR__/canary.txt", os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"pwned")
    return 1
