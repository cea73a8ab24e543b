# expect: exception
# Classic fork bomb: seccomp fails fork/clone with EPERM (RLIMIT_NPROC=0 too, for a non-root uid).
def solution():
    import os
    while True:
        os.fork()
