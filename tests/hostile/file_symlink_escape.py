# expect: exception
# A symlink inside the working directory that points outside; writing through it must fail.
def solution():
    import os
    os.symlink("__CANARY_DIR__", "escape")
    with open("escape/through_link.txt", "w") as handle:
        handle.write("pwned")
    return 1
