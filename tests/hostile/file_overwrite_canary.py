# expect: exception
def solution():
    with open("__CANARY_DIR__/canary.txt", "w") as handle:
        handle.write("pwned")
    return 1
