# expect: blocked
# hook-only: yes
# /tmp is world-writable, so the uid drop alone would not stop this.
def solution():
    with open("/tmp/reft_hostile_marker", "w") as handle:
        handle.write("pwned")
    return 1
