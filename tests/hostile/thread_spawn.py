# expect: exception
# Threads would outlive the program; RLIMIT_NPROC=0 and seccomp make creation fail.
def solution():
    import threading
    worker = threading.Thread(target=lambda: None)
    worker.start()
    return 1
