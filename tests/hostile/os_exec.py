# expect: exception
# Replaces the worker process with a shell.
def solution():
    import os
    os.execv("/bin/sh", ["/bin/sh", "-c", "touch __CANARY_DIR__/from_exec"])
