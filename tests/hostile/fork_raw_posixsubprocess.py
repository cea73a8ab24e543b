# expect: exception
# Calls the C helper behind subprocess directly; seccomp fails clone/fork with EPERM: OSError.
def solution():
    import _posixsubprocess
    import os
    import sys
    if sys.version_info[:2] != (3, 11):
        raise OSError("signature of fork_exec only known for 3.11")
    errpipe_read, errpipe_write = os.pipe()
    exe = b"/bin/touch"
    _posixsubprocess.fork_exec(
        [exe, b"__CANARY_DIR__/forked"], [exe], True, (errpipe_write,), None, None,
        -1, -1, -1, -1, -1, -1, errpipe_read, errpipe_write,
        False, False, -1, None, None, None, -1, None, False)
    return 1
