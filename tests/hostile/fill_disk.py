# expect: exception
# Writing inside the working directory is allowed, but RLIMIT_FSIZE caps a file at 16 MB (EFBIG).
def solution():
    with open("big.bin", "wb") as handle:
        for _ in range(100):
            handle.write(b"\0" * (1024 * 1024))
    return 1
