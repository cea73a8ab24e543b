# expect: exception
def solution():
    with open("__CANARY_DIR__/new_file.txt", "x") as handle:
        handle.write("pwned")
    return 1
