# expect: exception
def solution():
    import os
    os.chdir("__CANARY_DIR__")
    with open("relative.txt", "w") as handle:
        handle.write("pwned")
    return 1
