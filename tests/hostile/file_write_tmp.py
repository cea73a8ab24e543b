# expect: answer=1
# /tmp is world-writable on the host; in the sandbox it is a private tmpfs, so the write succeeds there
# and the host's /tmp stays untouched (the test checks the marker does not appear).
def solution():
    with open("/tmp/reft_hostile_marker", "w") as handle:
        handle.write("pwned")
    return 1
