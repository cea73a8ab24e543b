# expect: blocked
# Classic fork bomb: the audit hook refuses os.fork (seccomp and RLIMIT_NPROC=0 would too).
def solution():
    import os
    while True:
        os.fork()
